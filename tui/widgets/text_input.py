"""An input field that never holds a control character: what is pasted into it is drawn as it is."""

from __future__ import annotations

from textual.widgets import Input

from ..text import typed


class TextInput(Input):
    """``Input`` whose value has each control character replaced by ``�`` (a pasted ``ESC]52;…`` would
    otherwise reach the terminal as the field draws it). A password field keeps what was typed: it
    shows only dots, and the secret must stay exactly as given."""

    def validate_value(self, value: str) -> str:
        return value if self.password else typed(value)
