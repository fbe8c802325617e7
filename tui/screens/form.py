"""The base of every form: saves in a worker thread, shows engine errors beside their field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from regcache.proxy.core.errors import RegcacheError

from ..backend import Backend
from ..text import text
from ..widgets.key_bar import KeyBar

T = TypeVar("T")


class FieldError(RegcacheError):
    """An engine error re-labelled for a form field (e.g. errors of inline new credentials)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class FormScreen(ModalScreen[T], Generic[T]):
    """A modal form. Subclasses compose fields with ``Static(id="<field>-error", classes="error")``."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="form.cancel"),
        Binding("ctrl+s", "save", "Save", id="form.save"),
    ]

    #: engine error fields that have no label of their own show here
    FALLBACK_ERROR_FIELD = "form"

    def compose(self) -> ComposeResult:
        yield from self.compose_form()
        yield KeyBar()

    def compose_form(self) -> ComposeResult:
        raise NotImplementedError

    @property
    def backend(self) -> Backend:
        return self.app.backend  # type: ignore[attr-defined]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "cancel":
            self.action_cancel()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_save(self) -> None:
        raise NotImplementedError

    def clear_errors(self) -> None:
        for error in self.query(".error").results(Static):
            error.update("")
            error.display = False

    def show_error(self, field: str | None, message: str) -> None:
        target = self.query(f"#{field}-error") if field else None
        if not target:
            target = self.query(f"#{self.FALLBACK_ERROR_FIELD}-error")
        error = target.first(Static)
        error.update(text(message))  # engine errors quote what was typed or stored
        error.display = True

    @work(thread=True, exclusive=True, group="form-save")
    def submit(self, save: Callable[[Backend], T]) -> None:
        """Run ``save`` off the UI thread; dismiss with its result, or show its error beside the field."""
        try:
            result = self.backend.call(save)
        except RegcacheError as exc:
            self.app.call_from_thread(self.show_error, getattr(exc, "field", None), str(exc))
            return
        self.app.call_from_thread(self.dismiss, result)
