"""A label and its field on one line, so forms fit an 80x24 terminal."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Label

from ..text import text


class FormRow(Horizontal):
    """``Label | field``; give the field ``compact=True`` where it supports it."""

    DEFAULT_CLASSES = "form-row"

    def __init__(self, label: str, field: Widget, **kwargs) -> None:
        super().__init__(**kwargs)
        self._label = label
        self._field = field

    def compose(self) -> ComposeResult:
        yield Label(text(self._label), classes="form-label")
        yield self._field
