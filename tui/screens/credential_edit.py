"""Details of a credential set (health with its message, the rules using it, dates) and its secret ids to edit."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Static

from regcache.proxy.core.models import CredentialSet

from ..backend import Backend
from ..text import printable, text
from ..widgets.form_row import FormRow
from ..widgets.text_input import TextInput
from .form import FormScreen


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "never"


class CredentialEditForm(FormScreen[CredentialSet | None]):
    """Shows a credential set and changes its username and password secret ids (URIs, not the values: the
    ids are no secret, so they are shown as typed) through the engine's checks, like `credential-set update`."""

    FALLBACK_ERROR_FIELD = "username_secret_id"

    def __init__(self, cs: CredentialSet, used_by: list[str], budget: str = "-") -> None:
        super().__init__()
        self._cs = cs
        self._used_by = used_by
        self._budget = budget

    def compose_form(self) -> ComposeResult:
        cs = self._cs
        health = cs.health
        problem = " · ".join(printable(v) for v in (health.message, health.error_code) if v)
        lines = [
            f"Login server  {printable(cs.login_server)}",
            f"Health        {health.status.value} · checked {_when(health.checked_at)}",
            f"Error         {problem or '-'}",
            f"Used by       {', '.join(printable(n) for n in self._used_by) or 'no cache rule'}",
            f"Created       {_when(cs.created_at)}",
            f"Budget        {printable(self._budget)}",
        ]
        with Vertical(classes="dialog"):
            yield Label(text(f"Credentials {cs.name}"), classes="title")
            with VerticalScroll(classes="fields"):
                yield Static(text("\n".join(lines), multiline=True), id="credential-facts", classes="detail")
                yield FormRow("Username secret", TextInput(printable(cs.username_secret_id, limit=None),
                                                           placeholder="keyring://SERVICE/NAME or env://VAR",
                                                           id="username-id", compact=True))
                yield Static(id="username_secret_id-error", classes="error")
                yield FormRow("Password secret", TextInput(printable(cs.password_secret_id, limit=None),
                                                           placeholder="keyring://SERVICE/NAME or env://VAR",
                                                           id="password-id", compact=True))
                yield Static(id="password_secret_id-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Close (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#username-id").focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def action_save(self) -> None:
        self.clear_errors()
        cs = self._cs
        # only what was changed goes to the engine (a stored id with control characters shows them spelled out)
        username = self.query_one("#username-id", Input).value.strip()
        password = self.query_one("#password-id", Input).value.strip()
        username_id = username if username != printable(cs.username_secret_id, limit=None) else None
        password_id = password if password != printable(cs.password_secret_id, limit=None) else None
        if username_id is None and password_id is None:
            self.dismiss(None)
            return
        name = cs.name

        def save(backend: Backend) -> CredentialSet:
            return backend.control.update_credential_set(name, username_id, password_id)

        self.submit(save)
