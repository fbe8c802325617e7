"""Activity: the live cache-hit log from the proxy's pull events, filterable, with running totals."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Label, Static

from regcache.proxy.state.statistics import RecordedEvent, Totals

from .. import format as fmt
from ..text import text
from ..widgets.text_input import TextInput
from .base import Blade

KEEP = 1000
RESULT_STYLES = {"hit": "green", "miss": "yellow", "stale": "magenta", "error": "bold red"}


def _matches(event: RecordedEvent, needle: str) -> bool:
    e = event.event
    return any(needle in (field or "").lower() for field in
               (e.repository, e.reference, e.result, e.client, e.rule, e.kind, e.detail))


class ActivityBlade(Blade):
    REFRESH_SECONDS = 1.0
    BINDINGS = [
        Binding("slash", "filter", "Filter", id="activity.filter"),
        Binding("escape", "clear_filter", "Clear filter", id="activity.clear"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[RecordedEvent] = []
        self.last_id = 0
        self.needle = ""

    def compose(self) -> ComposeResult:
        yield Label("Activity", classes="blade-title")
        yield Static("", id="activity-totals", classes="summary")
        yield TextInput(placeholder="/ to filter: repository, tag, hit, miss, stale, error, client, rule",
                    id="activity-filter", compact=True)
        table: DataTable = DataTable(id="activity-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("Time", "Result", "Repository", "Reference", "Size", "Took", "Client")
        yield table

    @work(thread=True, exclusive=True, group="activity-load")
    def load_in_thread(self) -> None:
        after = self.last_id

        def read(b) -> tuple[list[RecordedEvent], Totals]:
            new = b.stats.events(after, KEEP) if after else b.stats.latest_events(KEEP)
            return new, b.stats.totals()

        new, totals = self.backend.call(read)
        self.app.call_from_thread(self._show, new, totals)

    def _show(self, new: list[RecordedEvent], totals: Totals) -> None:
        self.query_one("#activity-totals", Static).update(text(
            f"hits {fmt.ratio(totals.hit_ratio)} · {fmt.count(totals.hits, 'hit')} "
            f"{fmt.count(totals.misses, 'miss', 'misses')} {fmt.count(totals.stale)} stale "
            f"{fmt.count(totals.errors, 'error')} · served {fmt.size(totals.bytes_served)} · "
            f"upstream {fmt.size(totals.bytes_fetched)}"))
        if not new and self.query_one(DataTable).row_count:
            return
        if new:
            self.last_id = new[-1].id
            self.events = (self.events + new)[-KEEP:]
        self._render_rows()

    def _render_rows(self) -> None:
        table = self.query_one(DataTable)
        shown = [e for e in reversed(self.events) if not self.needle or _matches(e, self.needle)]
        rows = []
        for recorded in shown:
            e = recorded.event
            rows.append((str(recorded.id), (text(fmt.when(e.ts)), text(e.result, RESULT_STYLES.get(e.result, "")),
                                            text(e.repository), text(fmt.reference(e.reference)),
                                            text(fmt.size(e.bytes) if e.bytes else "-"),
                                            text(fmt.duration(e.duration_ms)), text(e.client))))
        self.fill(table, rows)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.needle = event.value.strip().lower()
        self._render_rows()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(DataTable).focus()

    def action_filter(self) -> None:
        self.query_one("#activity-filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#activity-filter", Input).value = ""
        self.query_one(DataTable).focus()
