"""Every field of one pull event (Activity, Enter): the whole reason, reference and User-Agent, not cut."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from regcache.proxy.core.user_agents import client_tool
from regcache.proxy.state.statistics import RecordedEvent

from .. import format as fmt
from ..text import text
from ..widgets.key_bar import KeyBar


def event_fields(recorded: RecordedEvent) -> list[tuple[str, str]]:
    """(label, value) for every field of the event, values as recorded (shown through :func:`text`)."""
    e = recorded.event
    return [
        ("Event", f"#{recorded.id}"),
        ("Time", e.ts.isoformat(sep=" ", timespec="milliseconds")),
        ("Result", f"{e.result} (HTTP {e.status})"),
        ("Request", f"{e.method} {e.kind}"),
        ("Repository", e.repository),
        ("Reference", e.reference),
        ("Rule", e.rule or "(none: no cache rule covers it)"),
        ("Size", f"{fmt.size(e.bytes)} ({e.bytes:,} bytes)"),
        ("Took", fmt.duration(e.duration_ms)),
        ("Client", e.client or "-"),
        ("Tool", client_tool(e.user_agent) or "-"),
        ("User-Agent", e.user_agent or "-"),
        ("Reason", e.detail or "-"),
    ]


class EventDetailsScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter,q", "close", "Close", id="event.close")]

    def __init__(self, recorded: RecordedEvent) -> None:
        super().__init__()
        self.recorded = recorded

    def compose(self) -> ComposeResult:
        e = self.recorded.event
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")  # a long reference or reason wraps, whole
        error = e.result == "error"
        for label, value in event_fields(self.recorded):
            grid.add_row(text(label), text(value, "red" if error and label == "Reason" else ""))
        with Vertical(classes="dialog event"):
            yield Label(text(f"{e.result} {e.repository}"), classes="title")
            with VerticalScroll(classes="fields"):
                yield Static(grid, id="event-fields")
        yield KeyBar()

    def action_close(self) -> None:
        self.dismiss(None)
