"""Cache rules: the table, and new / edit credentials / delete / details."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from regcache.proxy.core.models import CacheRule, CredentialSet, HealthStatus, Upstream
from regcache.proxy.core.rules import MAX_RULES
from regcache.proxy.state.statistics import RuleUsage

from .. import format as fmt
from ..screens.image_action import ImageActionScreen
from ..screens.rule_credentials import RuleCredentialsForm
from ..screens.rule_details import RuleDetailsScreen
from ..screens.rule_form import RuleForm
from ..screens.rule_settings import RuleSettingsForm
from ..text import notify, printable, text
from .base import Blade


@dataclass(frozen=True)
class RulesData:
    rules: list[CacheRule]
    credential_sets: list[CredentialSet]
    upstreams: list[Upstream]
    usage: dict[str, RuleUsage]


def credentials_cell(name: str | None, cs: CredentialSet | None) -> Text:
    """The rule's credential set with a health mark: ✓ healthy, ✗ unhealthy (details on Credentials)."""
    if name is None:
        return text("-", "dim")
    if cs is None or cs.health.status is HealthStatus.UNKNOWN:
        return text(f"{name} ?", "yellow")
    healthy = cs.health.status is HealthStatus.HEALTHY
    return text(f"{name} {'✓' if healthy else '✗'}", "green" if healthy else "bold red")


def health_text(cs: CredentialSet | None) -> Text:
    if cs is None:
        return text("-", "dim")
    style = {HealthStatus.HEALTHY: "green", HealthStatus.UNHEALTHY: "bold red"}.get(cs.health.status, "yellow")
    return text(cs.health.status.value, style)


class RulesBlade(Blade):
    CHANGES = "rules"
    BINDINGS = [
        Binding("n", "new_rule", "New", id="rules.new"),
        Binding("e", "edit_credentials", "Creds", id="rules.edit"),
        Binding("s", "settings", "Settings", id="rules.settings"),
        Binding("w", "warm", "Warm", id="rules.warm"),
        Binding("t", "test_rule", "Test", id="rules.test"),
        Binding("d", "delete_rule", "Delete", id="rules.delete"),
        Binding("enter", "details", "Details", id="rules.details"),
    ]

    data: RulesData | None = None

    def compose(self) -> ComposeResult:
        yield Label("Cache rules", classes="blade-title")
        yield Static("", id="rules-summary", classes="summary")
        table: DataTable = DataTable(id="rules-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("Name", "Target", "Source", "Creds", "Repos", "Hits")
        yield table

    @work(thread=True, exclusive=True, group="rules-load")
    def load_in_thread(self) -> None:
        data = self.backend.call(lambda b: RulesData(b.control.list_rules(), b.control.list_credential_sets(),
                                                     b.control.list_upstreams(), b.stats.rule_usage()))
        self.app.call_from_thread(self._show, data)

    def _show(self, data: RulesData) -> None:
        self.data = data
        sets = {cs.name: cs for cs in data.credential_sets}
        rows = []
        for rule in data.rules:
            usage = data.usage.get(rule.name, RuleUsage())
            rows.append((rule.name, (text(rule.name), text(rule.target_repository), text(rule.source_repository),
                                     credentials_cell(rule.credential_set, sets.get(rule.credential_set or "")),
                                     text(usage.repositories), text(usage.hits))))
        self.fill(self.query_one(DataTable), rows)
        self.query_one("#rules-summary", Static).update(text(
            f"{fmt.count(len(data.rules))} of {fmt.count(MAX_RULES, 'rule')}: clients pull Target, "
            "regcache fetches Source"
            if data.rules else "No cache rules yet. Press n to create one."))

    def _selected_rule(self) -> CacheRule | None:
        key = self.selected_key()
        if self.data is None or key is None:
            notify(self, "No cache rule selected", severity="warning")
            return None
        return next((r for r in self.data.rules if r.name == key), None)

    def action_new_rule(self) -> None:
        self._open_new_rule()

    @work(thread=True, exclusive=True, group="rules-form")
    def _open_new_rule(self) -> None:
        # Fresh lists: credentials may have been created since the table was loaded.
        upstreams, sets = self.backend.call(lambda b: (b.control.list_upstreams(), b.control.list_credential_sets()))

        def created(rule: CacheRule | None) -> None:
            if rule is not None:
                self.changed(f"Created cache rule {rule.name}: {rule.target_repository} => "
                              f"{rule.source_repository}")

        self.app.call_from_thread(self.app.push_screen, RuleForm(upstreams, sets), created)

    def action_edit_credentials(self) -> None:
        rule = self._selected_rule()
        if rule is None or self.data is None:
            return

        def saved(updated: CacheRule | None) -> None:
            if updated is not None:
                self.changed(f"Cache rule {updated.name} now uses "
                              f"{updated.credential_set or 'no credentials'}")

        self.app.push_screen(RuleCredentialsForm(rule, self.data.credential_sets), saved)

    def action_delete_rule(self) -> None:
        rule = self._selected_rule()
        if rule is not None:
            self.confirm_change(f"Delete cache rule {rule.name}?",
                                f"{printable(rule.target_repository)} => {printable(rule.source_repository)}\n"
                                "What it cached stays until it is evicted.",
                                lambda b: b.control.delete_rule(rule.name), f"Deleted cache rule {rule.name}")

    def action_settings(self) -> None:
        rule = self._selected_rule()
        if rule is None:
            return

        def saved(updated: CacheRule | None) -> None:
            if updated is not None:
                self.changed(f"Saved the settings of cache rule {updated.name}")

        self.app.push_screen(RuleSettingsForm(rule), saved)

    def action_warm(self) -> None:
        rule = self._selected_rule()
        if rule is not None:
            self.app.push_screen(ImageActionScreen(rule, "warm"), lambda _: self.load())

    def action_test_rule(self) -> None:
        rule = self._selected_rule()
        if rule is not None:
            self.app.push_screen(ImageActionScreen(rule, "test"))

    def action_sync_tags(self) -> None:
        rule = self._selected_rule()
        if rule is not None:
            self.run_job(lambda ops: ops.sync_tags(rule.name), _sync_message)

    def action_details(self) -> None:
        rule = self._selected_rule()
        if rule is not None:
            self.app.push_screen(RuleDetailsScreen(rule))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_details()


def _sync_message(outcomes: list) -> str:
    if not outcomes:
        return "Nothing to sync yet: a wildcard rule syncs the repositories it has cached"
    fetched = sum(o.fetched for o in outcomes)
    failed = [o for o in outcomes if o.result != "ok"]
    return (f"Tag sync: {fetched} new or moved tag(s) fetched" +
            (f"; failed for {', '.join(o.repository for o in failed)}: {failed[0].detail}" if failed else ""))
