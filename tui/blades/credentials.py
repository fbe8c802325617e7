"""Credentials: the credential sets with their health, the rules using them; create, details/edit, re-check,
delete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from regcache.proxy.core.models import CacheRule, CredentialSet, RateLimitRecord, Upstream
from regcache.proxy.pull.cache import LoginCheck

from .. import format as fmt
from ..screens.credential_edit import CredentialEditForm
from ..screens.credential_form import CredentialForm
from ..text import notify, printable, text
from ..widgets.row_table import RowTable, cut
from .base import Blade
from .rules import health_text

#: the error column's width: the whole message is in the details (Enter), the columns after it stay in reach
ERROR_WIDTH = 48


@dataclass(frozen=True)
class CredentialsData:
    credential_sets: list[CredentialSet]
    upstreams: list[Upstream]
    #: the rules using each credential set, by its name
    used_by: dict[str, list[str]]
    budgets: dict[tuple[str, str], RateLimitRecord]


def used_by(rules: list[CacheRule]) -> dict[str, list[str]]:
    """The names of the rules using each credential set."""
    users: dict[str, list[str]] = {}
    for rule in rules:
        if rule.credential_set:
            users.setdefault(rule.credential_set, []).append(rule.name)
    return users


def users_text(names: list[str], limit: int = 2) -> str:
    """``ubuntu, team-ghcr +3``, or ``-`` when no rule uses the set."""
    if not names:
        return "-"
    shown = ", ".join(printable(n) for n in names[:limit])
    return shown + (f" +{len(names) - limit}" if len(names) > limit else "")


def error_text(cs: CredentialSet) -> str:
    """What went wrong, in words (the code alone says little): ``message (Code)``."""
    health = cs.health
    if not health.error_code and not health.message:
        return ""
    if health.message and health.error_code:
        return f"{health.message} ({health.error_code})"
    return health.message or health.error_code or ""


class CredentialsBlade(Blade):
    CHANGES = "credentials"
    BINDINGS = [
        Binding("n", "new_credentials", "Create", id="credentials.new"),
        Binding("enter", "edit_credentials", "Details/edit", id="credentials.edit"),
        Binding("r", "check_health", "Re-check", id="credentials.check"),
        Binding("d", "delete_credentials", "Delete", id="credentials.delete"),
    ]

    data: CredentialsData | None = None

    @property
    def credential_sets(self) -> list[CredentialSet]:
        return self.data.credential_sets if self.data else []

    @property
    def upstreams(self) -> list[Upstream]:
        return self.data.upstreams if self.data else []

    def compose(self) -> ComposeResult:
        yield Label("Credentials", classes="blade-title")
        yield Static("", id="credentials-summary", classes="summary")
        table = RowTable(id="credentials-table")
        table.add_columns("Name", "Health", "Used by", "Created", "Error", "Login server", "Username secret",
                          "Password secret", "Budget")
        yield table

    @work(thread=True, exclusive=True, group="credentials-load")
    def load_in_thread(self) -> None:
        data = self.backend.call(lambda b: CredentialsData(b.control.list_credential_sets(), b.control.list_upstreams(),
                                                           used_by(b.control.list_rules()), b.control.rate_limits()))
        self.deliver(self._show, data)

    def _show(self, data: CredentialsData) -> None:
        self.data = data
        self.query_one(RowTable).show_rows([
            (cs.name, (text(cs.name), health_text(cs), text(users_text(data.used_by.get(cs.name, []))),
                       text(cs.created_at.strftime("%Y-%m-%d")),
                       text(cut(printable(error_text(cs)), ERROR_WIDTH), "red"),
                       text(cs.login_server), text(cs.username_secret_id), text(cs.password_secret_id),
                       text(fmt.budget(data.budgets.get((cs.login_server, cs.name))))))
            for cs in data.credential_sets])
        sets = data.credential_sets
        unhealthy = sum(cs.health.status.value == "Unhealthy" for cs in sets)
        self.query_one("#credentials-summary", Static).update(text(
            (fmt.count(len(sets), "credential set") + (f", {unhealthy} unhealthy" if unhealthy else "")
             + " · enter: details and edit")
            if sets else "No credentials yet. Press n to create a set for an upstream login."))

    def _selected(self) -> CredentialSet | None:
        name = self.selected_key()
        return next((cs for cs in self.credential_sets if cs.name == name), None)

    def action_new_credentials(self) -> None:
        def created(cs: CredentialSet | None) -> None:
            if cs is not None:
                self.changed(f"Created credentials {cs.name} for {cs.login_server}: {cs.health.status.value}")

        self.app.push_screen(CredentialForm(self.upstreams), created)

    def action_edit_credentials(self) -> None:
        cs = self._selected()
        if cs is None or self.data is None:
            return

        def saved(updated: CredentialSet | None) -> None:
            if updated is not None:
                self.changed(health_message(updated))

        budget = self.data.budgets.get((cs.login_server, cs.name))
        self.app.push_screen(CredentialEditForm(cs, self.data.used_by.get(cs.name, []), fmt.budget(budget)), saved)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_edit_credentials()

    def action_check_health(self) -> None:
        name = self.selected_key()
        if name is not None:
            self.run_recheck(name)

    @work(thread=True, group="blade-change")
    def run_recheck(self, name: str) -> None:
        """Log in to the upstream with ``name`` for real (:meth:`Backend.check_credential_set`), off the UI thread."""
        self._report(lambda: self.backend.check_credential_set(name),
                     lambda checked: check_message(cast(LoginCheck, checked)))

    def action_delete_credentials(self) -> None:
        name = self.selected_key()
        if name is not None:
            self._delete(name)

    @work(thread=True, exclusive=True, group="credentials-delete")
    def _delete(self, name: str) -> None:
        # The engine refuses to delete a set a rule uses: say so now rather than ask and then refuse.
        users = self.backend.call(lambda b: used_by(b.control.list_rules()).get(name, []))
        if users:
            self.app.call_from_thread(
                notify, self, f"Credentials {name} are used by cache rule(s) {', '.join(users)}: attach other "
                              f"credentials to them first (e on Cache rules)", severity="error", timeout=10)
            return
        self.app.call_from_thread(self.confirm_change, f"Delete credentials {name}?",
                                  "The secrets stay in the keyring.", lambda b: b.control.delete_credential_set(name),
                                  f"Deleted credentials {name}")


def check_message(check: LoginCheck) -> str:
    """What a re-check found: the health it recorded, or why the upstream could not tell."""
    said = health_message(check.credential_set)
    return said if check.verified else f"{said} (not checked now: {check.message})"


def health_message(cs: CredentialSet) -> str:
    detail = error_text(cs)
    return f"Credentials {cs.name}: {cs.health.status.value}" + (f": {detail}" if detail else "")
