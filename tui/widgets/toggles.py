"""Checkboxes and radio buttons whose state reads without colour: ``[x]``/``[ ]`` and ``(•)``/``( )``.

Textual draws ``▐X▌`` and ``▐●▌`` both on and off and tells them apart by colour only: on a monochrome
terminal, in a screenshot read as text or to a colour-blind operator, "Serve cached tags the upstream
deleted" off looked like on. These draw a different glyph for each state.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox, RadioButton


def _glyph(left: str, inner: str, right: str, style) -> Content:
    return Content.assemble((left, style), (inner, style), (right, style))


class StateCheckbox(Checkbox):
    """A ``Checkbox`` drawn ``[x]`` when on and ``[ ]`` when off."""

    ON, OFF = "x", " "

    @property
    def _button(self) -> Content:
        return _glyph("[", self.ON if self.value else self.OFF, "]", self.get_visual_style("toggle--button"))


class StateRadioButton(RadioButton):
    """A ``RadioButton`` drawn ``(•)`` when chosen and ``( )`` when not."""

    ON, OFF = "•", " "

    @property
    def _button(self) -> Content:
        return _glyph("(", self.ON if self.value else self.OFF, ")", self.get_visual_style("toggle--button"))
