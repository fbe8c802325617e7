"""Create credentials: name, login server, and the values (to the keyring) or their secret URIs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Label, Select, Static

from regcache.proxy.core.errors import RegcacheError
from regcache.proxy.core.models import AuthPolicy, CredentialSet, Upstream

from ..backend import Backend
from ..text import text
from ..widgets.credential_fields import CredentialFields
from ..widgets.form_row import FormRow
from .form import FieldError, FormScreen


class CredentialForm(FormScreen[CredentialSet | None]):
    """Creates a credential set; typed secrets go to the keyring and are never shown again."""

    FALLBACK_ERROR_FIELD = "cred"

    def __init__(self, upstreams: list[Upstream]) -> None:
        super().__init__()
        self._upstreams = [u for u in upstreams if u.auth_policy is not AuthPolicy.ANONYMOUS]

    def compose_form(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Create credentials", classes="title")
            with VerticalScroll(classes="fields"):
                yield FormRow("Login server", Select([(text(u.login_server), u.login_server) for u in self._upstreams],
                                                     allow_blank=False, id="login-server", compact=True))
                yield Static(id="login_server-error", classes="error")
                yield CredentialFields()
            with Horizontal(classes="buttons"):
                yield Button("Create (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#login-server").focus()  # the first field

    def show_error(self, field: str | None, message: str) -> None:
        if field == "login_server":
            super().show_error(field, message)
        else:
            self.query_one(CredentialFields).show_error(message, field)

    def action_save(self) -> None:
        self.clear_errors()
        values = self.query_one(CredentialFields).values()
        login_server = str(self.query_one("#login-server", Select).value)

        def save(backend: Backend) -> CredentialSet:
            try:
                return values.save(backend.control, login_server)
            except RegcacheError as exc:
                raise FieldError(getattr(exc, "field", None) or "cred", str(exc)) from None

        self.submit(save)
