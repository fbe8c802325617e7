"""Create a client token (ACR's token with a scope map), and show its generated password once."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from regcache.proxy.core.tokens import ClientToken

from ..backend import Backend
from ..text import printable, text
from ..widgets.form_row import FormRow
from ..widgets.key_bar import KeyBar
from ..widgets.text_input import TextInput
from .form import FormScreen


class TokenForm(FormScreen[tuple[ClientToken, str] | None]):
    """Name, the repositories it may pull and an expiry; saves through `regcache token create`'s checks and
    returns the token with its generated password (which regcache keeps only as a salted hash)."""

    FALLBACK_ERROR_FIELD = "name"

    def compose_form(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Create client token", classes="title")
            yield Static(text("Clients log in with the token's name and password. Once a token exists, every "
                              "client must log in with one."), classes="detail")
            yield FormRow("Token name", TextInput(placeholder="5-50 letters, digits, hyphens: the login user name",
                                                  id="name", compact=True))
            yield Static(id="name-error", classes="error")
            yield FormRow("Repositories", TextInput(placeholder="ubuntu team/* (everything under team/) or *",
                                                    id="repositories", compact=True))
            yield Static(id="repositories-error", classes="error")
            yield FormRow("Expiry", TextInput(placeholder="30d, 2026-12-31 or empty: never", id="expiry",
                                              compact=True))
            yield Static(id="expiry-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Create (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#name").focus()

    def action_save(self) -> None:
        self.clear_errors()
        name = self.query_one("#name", Input).value.strip()
        repositories = self.query_one("#repositories", Input).value.replace(",", " ").split()
        expiry = self.query_one("#expiry", Input).value.strip() or None

        def save(backend: Backend) -> tuple[ClientToken, str]:
            return backend.control.create_token(name, repositories, expiry)

        self.submit(save)


class TokenPasswordScreen(ModalScreen[None]):
    """The new token's password, shown this once, selected so that ctrl+c copies it."""

    BINDINGS = [Binding("escape", "close", "Close (the password is not shown again)", id="password.close")]

    def __init__(self, token: ClientToken, password: str, address: str) -> None:
        super().__init__()
        self._token = token
        self._password = password
        self._address = address

    def compose(self) -> ComposeResult:
        name = printable(self._token.name)
        with Vertical(classes="dialog"):
            yield Label(text(f"Token {name} created"), classes="title")
            yield Static(text("Save the password now: it is not shown again (regcache keeps only a salted hash). "
                              "It is selected: ctrl+c copies it."), classes="detail")
            yield TextArea(printable(self._password), read_only=True, id="password", soft_wrap=True)
            yield Static(text(f"docker login {printable(self._address)} -u {name}\n"
                              f"skopeo copy --src-creds {name}:PASSWORD docker://{printable(self._address)}/...",
                              multiline=True), classes="detail")
            with Horizontal(classes="buttons"):
                yield Button("I saved it (esc)", variant="primary", id="close")
        yield KeyBar()

    def on_mount(self) -> None:
        area = self.query_one("#password", TextArea)
        area.select_all()
        area.focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_close()

    def action_close(self) -> None:
        self._password = ""
        self.query_one("#password", TextArea).load_text("")
        self.dismiss(None)
