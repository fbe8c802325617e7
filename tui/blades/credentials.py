"""Credentials: the credential sets with their health; create, re-check, delete."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from proxy.models import CredentialSet, Upstream

from ..messages import ConfigurationChanged
from ..screens.confirm import ConfirmScreen
from ..screens.credential_form import CredentialForm
from .base import Blade
from .rules import health_text


class CredentialsBlade(Blade):
    TITLE = "Credentials"
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
        table.add_columns("Name", "Health", "Login server", "Error", "Username secret", "Password secret")
        yield table

    @work(thread=True, exclusive=True, group="credentials-load")
    def load(self) -> None:
        sets, upstreams = self.backend.call(lambda b: (b.control.list_credential_sets(), b.control.list_upstreams()))
        self.app.call_from_thread(self._show, sets, upstreams)

    def _show(self, sets: list[CredentialSet], upstreams: list[Upstream]) -> None:
        self.credential_sets, self.upstreams = sets, upstreams
        self.fill(self.query_one(DataTable), [
            (cs.name, (cs.name, health_text(cs), cs.login_server, cs.health.error_code or "",
                       cs.username_secret_id, cs.password_secret_id)) for cs in sets])
        unhealthy = sum(cs.health.status.value == "Unhealthy" for cs in sets)
        self.query_one("#credentials-summary", Static).update(
            (f"{len(sets)} credential sets" + (f", {unhealthy} unhealthy" if unhealthy else "")
             + " · secret values stay in the keyring")
            if sets else "No credentials yet. Press n to create a set for an upstream login.")

    def _changed(self, message: str) -> None:
        self.notify(message)
        self.load()
        self.post_message(ConfigurationChanged("credentials"))

    def action_new_credentials(self) -> None:
        def created(cs: CredentialSet | None) -> None:
            if cs is not None:
                self._changed(f"Created credentials {cs.name} for {cs.login_server}: {cs.health.status.value}")

        self.app.push_screen(CredentialForm(self.upstreams), created)

    def action_check_health(self) -> None:
        name = self.selected_key()
        if name is not None:
            self._check(name)

    @work(thread=True, group="credentials-change")
    def _check(self, name: str) -> None:
        cs = self.backend.call(lambda b: b.control.refresh_credential_set(name))
        detail = f" ({cs.health.error_code})" if cs.health.error_code else ""
        self.app.call_from_thread(self._changed, f"Credentials {name}: {cs.health.status.value}{detail}")

    def action_delete_credentials(self) -> None:
        name = self.selected_key()
        if name is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete(name)

        self.app.push_screen(ConfirmScreen(f"Delete credentials {name}?",
                                           "The secrets stay in the keyring."), answered)

    @work(thread=True, group="credentials-change")
    def _delete(self, name: str) -> None:
        from proxy.errors import RegcacheError

        try:
            self.backend.call(lambda b: b.control.delete_credential_set(name))
        except RegcacheError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)
            return
        self.app.call_from_thread(self._changed, f"Deleted credentials {name}")
