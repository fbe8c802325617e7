"""Activity: the live cache-hit log from the proxy's pull events, filterable, with running totals.

Each row says when, how it was answered, what was asked, why (an error's or a stale serve's reason, cut
short), through which rule, and by which client (its tool, from the User-Agent, and its address); Enter
shows every field of the event. The filter takes ``result:miss rule:team-all tool:docker`` (exact, any
of several values of one key; ``miss`` alone is ``result:miss``) and free words, each found in the
repository, reference or client.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Label, Static

from regcache.proxy.core.user_agents import client_tool
from regcache.proxy.state.statistics import RecordedEvent, Totals

from .. import format as fmt
from ..screens.event_details import EventDetailsScreen
from ..text import notify, text
from ..widgets.row_table import RowTable
from ..widgets.text_input import TextInput
from .base import Blade

KEEP = 1000
#: characters of an event's reason shown on its row (Enter shows all of it)
REASON_CHARS = 40
RESULT_STYLES = {"hit": "green", "miss": "yellow", "stale": "magenta", "error": "bold red"}
#: the filter's keys: each compares one field exactly (case-insensitive)
FILTER_KEYS = ("result", "rule", "kind", "tool", "status")


@dataclass(frozen=True, slots=True)
class ActivityFilter:
    """What the filter input says: ``key:value`` terms (values of one key: any; keys: all) and free words
    (all), each a substring of the repository, the reference or the client (its address or tool)."""

    terms: tuple[tuple[str, frozenset[str]], ...] = ()
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, typed: str) -> ActivityFilter:
        """``result:miss,error rule:team-all "two words" app``; a result alone (``miss``) is ``result:miss``; an
        unknown key (``sha256:ab``) is a word."""
        try:
            tokens = shlex.split(typed.lower())
        except ValueError:  # an open quote: take the words as they are
            tokens = typed.lower().split()
        terms: dict[str, set[str]] = {}
        words = []
        for token in tokens:
            key, sep, value = token.partition(":")
            if sep and key in FILTER_KEYS:
                terms.setdefault(key, set()).update(v for v in value.split(",") if v)
            elif token in RESULT_STYLES:  # "miss" alone means result:miss, not also team/missing
                terms.setdefault("result", set()).add(token)
            elif token:
                words.append(token)
        return cls(tuple((k, frozenset(v)) for k, v in terms.items()), tuple(words))

    def __bool__(self) -> bool:
        return bool(self.terms or self.words)

    def matches(self, recorded: RecordedEvent) -> bool:
        e = recorded.event
        tool = client_tool(e.user_agent)
        fields = {"result": str(e.result), "rule": e.rule or "", "kind": e.kind, "tool": tool,
                  "status": str(e.status)}
        if any(fields[key].lower() not in values for key, values in self.terms if values):
            return False
        haystack = (e.repository.lower(), e.reference.lower(), e.client.lower(), tool)
        return all(any(word in field for field in haystack) for word in self.words)


def client_cell(recorded: RecordedEvent) -> str:
    """``docker 10.0.0.7``: the tool from the User-Agent, then the address."""
    e = recorded.event
    return " ".join(part for part in (client_tool(e.user_agent), e.client) if part) or "-"


def image(recorded: RecordedEvent) -> str:
    """``ubuntu:22.04`` or ``ubuntu@sha256:1a2b3c4d5e6f`` (a digest shortened, as in docker's lists)."""
    e = recorded.event
    return f"{e.repository}{'@' if ':' in e.reference else ':'}{fmt.reference(e.reference)}"


class ActivityBlade(Blade):
    REFRESH_SECONDS = 1.0
    BINDINGS = [
        Binding("slash", "filter", "Filter", id="activity.filter"),
        Binding("enter", "details", "Details", id="activity.details"),
        Binding("escape", "clear_filter", "Clear filter", id="activity.clear"),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[RecordedEvent] = []
        self.last_id = 0
        self.filter = ActivityFilter()

    def compose(self) -> ComposeResult:
        yield Label("Activity", classes="blade-title")
        yield Static("", id="activity-totals", classes="summary")
        yield TextInput(placeholder="/ filter: result:miss rule:NAME tool:docker, or words",
                        id="activity-filter", compact=True)
        table = RowTable(id="activity-table")
        table.add_columns("Time", "Result", "Image", "Reason", "Rule", "Client", "Size", "Took")
        yield table
        yield Static("", id="activity-selected")

    @work(thread=True, exclusive=True, group="activity-load")
    def load_in_thread(self) -> None:
        after = self.last_id

        def read(b) -> tuple[list[RecordedEvent], Totals]:
            new = b.stats.events(after, KEEP) if after else b.stats.latest_events(KEEP)
            return new, b.stats.totals()

        new, totals = self.backend.call(read)
        self.deliver(self._show, new, totals)

    def _show(self, new: list[RecordedEvent], totals: Totals) -> None:
        self.query_one("#activity-totals", Static).update(text(
            f"hits {fmt.ratio(totals.hit_ratio)} · {fmt.count(totals.hits, 'hit')} "
            f"{fmt.count(totals.misses, 'miss', 'misses')} {fmt.count(totals.stale)} stale "
            f"{fmt.count(totals.errors, 'error')} · served {fmt.size(totals.bytes_served)} · "
            f"upstream {fmt.size(totals.bytes_fetched)}"))
        # A thread worker is not stopped when the next load starts (the first load and the 1 s refresh may
        # overlap, both reading from the same id): keep only what this blade has not merged yet.
        new = [e for e in new if e.id > self.last_id]
        if not new and self.query_one(DataTable).row_count:
            return
        if new:
            self.last_id = new[-1].id
            self.events = (self.events + new)[-KEEP:]
        self._render_rows()

    def _render_rows(self) -> None:
        rows = []
        for recorded in reversed(self.events):
            if self.filter and not self.filter.matches(recorded):
                continue
            e = recorded.event
            result = f"{e.result} {e.status}" if e.result == "error" else str(e.result)
            rows.append((str(recorded.id), (
                text(fmt.when(e.ts)), text(result, RESULT_STYLES.get(e.result, "")), text(image(recorded)),
                text(e.detail or "", "red" if e.result == "error" else "dim", limit=REASON_CHARS),
                text(e.rule or "-"), text(client_cell(recorded)), text(fmt.size(e.bytes) if e.bytes else "-"),
                text(fmt.duration(e.duration_ms)))))
        self.query_one(RowTable).show_rows(rows)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Under the table, the whole reason of the row under the cursor (an 80-column row cuts it)."""
        event.stop()
        recorded = self.selected_event()
        line = self.query_one("#activity-selected", Static)
        if recorded is None:
            line.update("")
            return
        e = recorded.event
        shown = text(f"{image(recorded)} ", "bold")
        shown.append_text(text(e.detail or f"{e.result}, HTTP {e.status}", "red" if e.result == "error" else ""))
        line.update(shown)

    def selected_event(self) -> RecordedEvent | None:
        key = self.selected_key()
        return next((e for e in self.events if str(e.id) == key), None) if key is not None else None

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.filter = ActivityFilter.parse(event.value)
        self._render_rows()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_details()

    def action_details(self) -> None:
        recorded = self.selected_event()
        if recorded is None:
            notify(self, "No event selected", severity="warning")
            return
        self.app.push_screen(EventDetailsScreen(recorded))

    def action_filter(self) -> None:
        self.query_one("#activity-filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#activity-filter", Input).value = ""
        self.query_one(DataTable).focus()
