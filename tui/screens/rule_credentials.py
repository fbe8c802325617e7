"""Edit credentials of a cache rule: attach another credential set, or remove it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Label, Select, Static

from regcache.proxy.core.models import CacheRule, CredentialSet

from ..backend import Backend
from ..text import text
from ..widgets.form_row import FormRow
from .form import FormScreen

NONE = "-"


class RuleCredentialsForm(FormScreen[CacheRule | None]):
    """Choose the rule's credential set among those for its login server, or none."""

    FALLBACK_ERROR_FIELD = "credential_set"

    def __init__(self, rule: CacheRule, credential_sets: list[CredentialSet]) -> None:
        super().__init__()
        self._rule = rule
        self._options = [(text(cs.name), cs.name) for cs in credential_sets
                         if cs.login_server == rule.source_login_server]

    def compose_form(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(text(f"Credentials of cache rule {self._rule.name}"), classes="title")
            yield Static(text(f"{self._rule.target_repository} => {self._rule.source_repository}"), classes="detail")
            yield FormRow("Credentials", Select([("(none: pull anonymously)", NONE), *self._options],
                                                allow_blank=False, value=self._rule.credential_set or NONE,
                                                id="credential-set", compact=True))
            yield Static(id="credential_set-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#credential-set").focus()

    def action_save(self) -> None:
        self.clear_errors()
        chosen = str(self.query_one("#credential-set", Select).value)
        name = self._rule.name

        def save(backend: Backend) -> CacheRule:
            if chosen == NONE:
                return backend.control.update_rule(name, remove_credential_set=True)
            return backend.control.update_rule(name, credential_set=chosen)

        self.submit(save)
