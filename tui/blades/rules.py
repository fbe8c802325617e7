"""Cache rules: the table, and new / edit credentials / delete / details."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Label, Static

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
from ..widgets.row_table import RowTable, cut, fit_widths
from ..widgets.text_input import TextInput
from .base import Blade

#: the columns that share the table's width (Repos and Hits follow them, beyond 80 columns)
FITTED = ("Name", "Target", "Source", "Creds", "Created")
#: the table's width when it has none yet (80 columns less the navigation, padding and scrollbar)
DEFAULT_TABLE_WIDTH = 64


@dataclass(frozen=True)
class RulesData:
    rules: list[CacheRule]
    credential_sets: list[CredentialSet]
    upstreams: list[Upstream]
    usage: dict[str, RuleUsage]


def credentials_mark(name: str | None, cs: CredentialSet | None) -> tuple[str, str]:
    """The rule's credential set with a health mark (✓ healthy, ✗ unhealthy, ? unknown) and its style."""
    if name is None:
        return "-", "dim"
    if cs is None or cs.health.status is HealthStatus.UNKNOWN:
        return f"{printable(name)} ?", "yellow"
    healthy = cs.health.status is HealthStatus.HEALTHY
    return f"{printable(name)} {'✓' if healthy else '✗'}", "green" if healthy else "bold red"


def credentials_cell(name: str | None, cs: CredentialSet | None) -> Text:
    """:func:`credentials_mark` as a table cell (details on Credentials)."""
    shown, style = credentials_mark(name, cs)
    return text(shown, style)


def created(rule: CacheRule) -> str:
    """The creation date, as the portal's list shows it (UTC)."""
    return rule.created_at.strftime("%Y-%m-%d")


def rule_matches(rule: CacheRule, needle: str) -> bool:
    """Whether the search ``needle`` (lower case) is in the rule's name, target, source or credential set."""
    return any(needle in (field or "").lower() for field in
               (rule.name, rule.target_repository, rule.source_repository, rule.credential_set))


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
        Binding("slash", "search", "Search", id="rules.search"),
        Binding("escape", "clear_search", "Clear search", show=False, id="rules.clear"),
    ]

    data: RulesData | None = None
    #: what the search box holds, in lower case ("" shows every rule)
    needle: str = ""

    def compose(self) -> ComposeResult:
        yield Label("Cache rules", classes="blade-title")
        yield Static("", id="rules-summary", classes="summary")
        yield TextInput(placeholder="search name, target, source or credentials (enter: to the list, esc: clear)",
                        id="rules-search", compact=True)
        table = RowTable(id="rules-table")
        table.add_columns(*FITTED, "Repos", "Hits")
        yield table

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#rules-search").display = False

    @work(thread=True, exclusive=True, group="rules-load")
    def load_in_thread(self) -> None:
        data = self.backend.call(lambda b: RulesData(b.control.list_rules(), b.control.list_credential_sets(),
                                                     b.control.list_upstreams(), b.stats.rule_usage()))
        self.deliver(self._show, data)

    def _show(self, data: RulesData) -> None:
        self.data = data
        self._render_rows()

    def _render_rows(self) -> None:
        """The rules matching the search, their first five columns fitted to the table's width."""
        data = self.data
        if data is None:
            return
        table = self.query_one(RowTable)
        sets = {cs.name: cs for cs in data.credential_sets}
        shown = [r for r in data.rules if not self.needle or rule_matches(r, self.needle)]
        cells = []
        for rule in shown:
            creds = credentials_mark(rule.credential_set, sets.get(rule.credential_set or ""))
            cells.append((rule, [printable(rule.name), printable(rule.target_repository),
                                 printable(rule.source_repository), creds[0], created(rule)], creds[1]))
        natural = [max([len(title), *(len(c[1][i]) for c in cells)]) for i, title in enumerate(FITTED)]
        # each column has a cell padding of 1 on both sides; a vertical scrollbar takes 2 more when rows overflow
        scrollbar = 2 if len(shown) >= (table.size.height or 20) - 1 else 0
        room = (table.size.width or DEFAULT_TABLE_WIDTH) - 2 * len(FITTED) - scrollbar
        widths = fit_widths(natural, room)
        rows = []
        for rule, values, creds_style in cells:
            usage = data.usage.get(rule.name, RuleUsage())
            fitted = [cut(v, w, middle=i == 2) for i, (v, w) in enumerate(zip(values, widths))]
            rows.append((rule.name, (text(fitted[0]), text(fitted[1]), text(fitted[2]), text(fitted[3], creds_style),
                                     text(fitted[4]), text(usage.repositories), text(usage.hits))))
        table.show_rows(rows)
        if not data.rules:
            summary = "No cache rules yet. Press n to create one."
        elif self.needle:
            summary = f"{fmt.count(len(shown))} of {fmt.count(len(data.rules), 'rule')} match the search"
        else:
            summary = (f"{fmt.count(len(data.rules))} of {fmt.count(MAX_RULES, 'rule')} · clients pull Target, "
                       f"fetched from Source")
        self.query_one("#rules-summary", Static).update(text(summary))

    def on_row_table_resized(self, event: RowTable.Resized) -> None:
        event.stop()
        self._render_rows()  # fitted to the table's new width (the same rows are not drawn again)

    # -- search ----------------------------------------------------------------------------------

    def action_search(self) -> None:
        search = self.query_one("#rules-search", Input)
        search.display = True
        search.focus()

    def action_clear_search(self) -> None:
        search = self.query_one("#rules-search", Input)
        search.value = ""
        search.display = False
        self.needle = ""
        self._render_rows()
        self.query_one(DataTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.needle = event.value.strip().lower()
        self._render_rows()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(DataTable).focus()

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
        upstreams, sets, count = self.backend.call(lambda b: (b.control.list_upstreams(),
                                                              b.control.list_credential_sets(),
                                                              len(b.control.list_rules())))
        if count >= MAX_RULES:  # the engine would refuse whatever the form held: say so before it opens
            self.app.call_from_thread(notify, self, f"The cache-rule limit of {MAX_RULES:,} is reached: delete a "
                                                    f"rule before adding another", severity="error", timeout=10)
            return

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
