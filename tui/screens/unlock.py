"""Unlock the keyring: asked once, at start, when a keyring backend needs a password (an encrypted file).

The TUI never lets a keyring prompt on the terminal (it would write over the screen and steal keystrokes);
the password is typed here instead and given to the backend for this process. Esc goes on without it:
pulls needing those secrets then fail with a reason (``KeyringLocked``) until the TUI is started again.
"""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from regcache.proxy.core.errors import RegcacheError
from regcache.proxy.secrets import KeyringLock

from ..text import text
from ..widgets.form_row import FormRow
from ..widgets.key_bar import KeyBar
from ..widgets.text_input import TextInput


class UnlockScreen(ModalScreen[bool]):
    """Returns True once the keyring is unlocked, False when skipped (Esc)."""

    BINDINGS = [Binding("escape", "skip", "Skip", id="unlock.skip")]

    def __init__(self, lock: KeyringLock) -> None:
        super().__init__()
        self._keyring = lock

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog confirm", id="unlock-dialog"):
            yield Label("Unlock the keyring", classes="title")
            yield Static(text(f"Credential sets read their secrets from {self._keyring.description}. Its password "
                              f"is asked once, here; Esc goes on without it (their pulls then fail).",
                              multiline=True), classes="detail")
            yield FormRow("Password", TextInput(placeholder="the keyring's password", password=True,
                                                id="unlock-password", compact=True))
            yield Static(id="unlock-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Unlock (enter)", variant="primary", id="unlock")
                yield Button("Skip (esc)", id="skip")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#unlock-password", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._try(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "unlock":
            self._try(self.query_one("#unlock-password", Input).value)
        else:
            self.action_skip()

    def action_skip(self) -> None:
        self.dismiss(False)

    def _try(self, password: str) -> None:
        self.query_one("#unlock-error", Static).display = False
        self._unlock(password)

    @work(thread=True, exclusive=True, group="unlock")
    def _unlock(self, password: str) -> None:
        # off the UI thread: the key derivation takes a moment
        try:
            self._keyring.unlock(password)
        except RegcacheError as exc:
            self.app.call_from_thread(self._failed, str(exc))
            return
        self.app.call_from_thread(self.dismiss, True)

    def _failed(self, message: str) -> None:
        field = self.query_one("#unlock-password", Input)
        field.value = ""
        field.focus()
        error = self.query_one("#unlock-error", Static)
        error.update(text(message))
        error.display = True
