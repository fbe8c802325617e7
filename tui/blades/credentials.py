"""Credentials: the credential sets with their health; create, re-check, delete."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from regcache.proxy.core.models import CredentialSet, Upstream

from .. import format as fmt
from ..screens.credential_form import CredentialForm
from ..text import text
from .base import Blade
from .rules import health_text


class CredentialsBlade(Blade):
    CHANGES = "credentials"
    BINDINGS = [
        Binding("n", "new_credentials", "Create", id="credentials.new"),
        Binding("r", "check_health", "Re-check", id="credentials.check"),
        Binding("d", "delete_credentials", "Delete", id="credentials.delete"),
    ]

    credential_sets: list[CredentialSet] = []
    upstreams: list[Upstream] = []

    def compose(self) -> ComposeResult:
        yield Label("Credentials", classes="blade-title")
        yield Static("", id="credentials-summary", classes="summary")
        table: DataTable = DataTable(id="credentials-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("Name", "Health", "Login server", "Budget", "Error", "Username secret", "Password secret")
        yield table

    @work(thread=True, exclusive=True, group="credentials-load")
    def load_in_thread(self) -> None:
        sets, upstreams, budgets = self.backend.call(lambda b: (b.control.list_credential_sets(),
                                                                b.control.list_upstreams(), b.control.rate_limits()))
        self.app.call_from_thread(self._show, sets, upstreams, budgets)

    def _show(self, sets: list[CredentialSet], upstreams: list[Upstream], budgets: dict) -> None:
        self.credential_sets, self.upstreams = sets, upstreams
        self.fill(self.query_one(DataTable), [
            (cs.name, (text(cs.name), health_text(cs), text(cs.login_server),
                       text(fmt.budget(budgets.get((cs.login_server, cs.name)))), text(cs.health.error_code or ""),
                       text(cs.username_secret_id), text(cs.password_secret_id))) for cs in sets])
        unhealthy = sum(cs.health.status.value == "Unhealthy" for cs in sets)
        self.query_one("#credentials-summary", Static).update(text(
            (fmt.count(len(sets), "credential set") + (f", {unhealthy} unhealthy" if unhealthy else "")
             + " · secret values stay in the keyring")
            if sets else "No credentials yet. Press n to create a set for an upstream login."))

    def action_new_credentials(self) -> None:
        def created(cs: CredentialSet | None) -> None:
            if cs is not None:
                self.changed(f"Created credentials {cs.name} for {cs.login_server}: {cs.health.status.value}")

        self.app.push_screen(CredentialForm(self.upstreams), created)

    def action_check_health(self) -> None:
        name = self.selected_key()
        if name is not None:
            self.run_change(lambda b: b.control.refresh_credential_set(name), health_message)

    def action_delete_credentials(self) -> None:
        name = self.selected_key()
        if name is not None:
            self.confirm_change(f"Delete credentials {name}?", "The secrets stay in the keyring.",
                                lambda b: b.control.delete_credential_set(name), f"Deleted credentials {name}")


def health_message(cs: CredentialSet) -> str:
    detail = f" ({cs.health.error_code})" if cs.health.error_code else ""
    return f"Credentials {cs.name}: {cs.health.status.value}{detail}"
