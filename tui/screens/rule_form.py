"""New cache rule, laid out as the portal's form: name, source, path, authentication, destination."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    Checkbox,
    Input,
    Label,
    RadioButton,
    RadioSet,
    Select,
    Static,
)

from regcache.proxy.core.errors import RegcacheError
from regcache.proxy.core.models import AuthPolicy, CacheRule, CredentialSet, Upstream

from ..backend import Backend
from ..text import text
from ..widgets.credential_fields import CredentialFields
from ..widgets.form_row import FormRow
from ..widgets.text_input import TextInput
from ..widgets.toggles import StateCheckbox, StateRadioButton
from .form import FieldError, FormScreen


class RuleForm(FormScreen[CacheRule | None]):
    """Creates a cache rule (and, optionally, new credentials for it) through the engine's checks."""

    FALLBACK_ERROR_FIELD = "name"

    def __init__(self, upstreams: list[Upstream], credential_sets: list[CredentialSet]) -> None:
        super().__init__()
        self._upstreams = upstreams
        self._credential_sets = credential_sets

    def compose_form(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("New cache rule", classes="title")
            with VerticalScroll(classes="fields"):
                yield FormRow("Rule name", TextInput(placeholder="e.g. ubuntu-cache", id="name", compact=True))
                yield Static(id="name-error", classes="error")
                yield FormRow("Source", Select([(text(f"{u.login_server}  ({u.title or 'custom'})"), u.login_server)
                                                for u in self._upstreams], allow_blank=False, id="login-server",
                                               compact=True))
                yield FormRow("Repository path", TextInput(placeholder="library/ubuntu, or acme/* for all under acme/",
                                                       id="path", compact=True))
                yield Static(id="source-error", classes="error")
                yield StateCheckbox("Authentication", id="auth")
                with Vertical(id="auth-section"):
                    with RadioSet(id="creds-mode"):
                        yield StateRadioButton("Select credentials", value=True, id="select-creds")
                        yield StateRadioButton("Create new credentials", id="create-creds")
                    yield FormRow("Credentials", Select([], prompt="choose", id="credential-set", compact=True),
                                  id="select-row")
                    yield CredentialFields(id="new-creds")
                yield Static(id="credential_set-error", classes="error")
                yield FormRow("Destination", TextInput(placeholder="namespace clients pull: ubuntu, team/* or *",
                                                   id="target", compact=True))
                yield Static(id="target-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self._sync_auth()
        self.query_one("#name", Input).focus()

    @property
    def login_server(self) -> str:
        return str(self.query_one("#login-server", Select).value)

    def _sync_auth(self) -> None:
        upstream = next((u for u in self._upstreams if u.login_server == self.login_server), None)
        policy = upstream.auth_policy if upstream is not None else AuthPolicy.BOTH
        checkbox = self.query_one("#auth", Checkbox)
        # The policy decides for docker.io (required) and mcr / ECR Public (refused); the operator
        # decides for the others, starting from "off" when the policy had switched it on.
        if policy is AuthPolicy.CREDENTIALS:
            checkbox.value = True
        elif policy is AuthPolicy.ANONYMOUS or checkbox.disabled:
            checkbox.value = False
        checkbox.disabled = policy is not AuthPolicy.BOTH
        self.query_one("#auth-section").display = checkbox.value
        creating = self.query_one("#create-creds", RadioButton).value
        self.query_one("#select-row").display = not creating
        self.query_one("#new-creds").display = creating
        options = [(text(cs.name), cs.name) for cs in self._credential_sets if cs.login_server == self.login_server]
        select = self.query_one("#credential-set", Select)
        select.set_options(options)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "login-server":
            self._sync_auth()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._sync_auth()

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        if event.radio_set.id == "creds-mode":
            self._sync_auth()

    def action_save(self) -> None:
        self.clear_errors()
        name = self.query_one("#name", Input).value.strip()
        login_server = self.login_server
        path = self.query_one("#path", Input).value.strip().strip("/")
        target = self.query_one("#target", Input).value.strip()
        authenticate = self.query_one("#auth", Checkbox).value
        creating = authenticate and self.query_one("#create-creds", RadioButton).value
        new_credentials = self.query_one(CredentialFields).values() if creating else None
        selected = self.query_one("#credential-set", Select).value
        credential_set = str(selected) if authenticate and not creating and selected != Select.NULL else None
        if authenticate and not creating and credential_set is None:
            self.show_error("credential_set", f"choose credentials for {login_server}, or create new ones")
            return

        def save(backend: Backend) -> CacheRule:
            created = None
            if new_credentials is not None:
                try:
                    created = new_credentials.save(backend.control, login_server)
                except RegcacheError as exc:
                    field = getattr(exc, "field", None)
                    if field in CredentialFields.ERROR_FIELDS:  # beside the new credentials' own field
                        raise FieldError(CredentialFields.ERROR_FIELDS[field], f"credentials: {exc}") from None
                    raise FieldError("credential_set", f"credentials: {exc}") from None
            try:
                return backend.control.create_rule(name, f"{login_server}/{path}", target,
                                                   created.name if created else credential_set)
            except RegcacheError:
                if new_credentials is not None and created is not None:  # nothing half-made stays behind
                    new_credentials.discard(backend.control)
                raise

        self.submit(save)
