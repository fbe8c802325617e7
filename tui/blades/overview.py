"""Overview: proxy state, rules, cache size, hit ratio; the fleet's members (s3 storage in a fleet); the last hour
as charts, cache size per rule as bars; recent errors."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, Sparkline, Static

from regcache.proxy.core.errors import RegcacheError
from regcache.proxy.core.models import CacheRule, CredentialSet, HealthStatus
from regcache.proxy.core.settings import FilesystemStorage, S3Storage, StorageConfig
from regcache.proxy.state.statistics import CacheSize, Minute, RecordedEvent, Totals
from regcache.proxy.storage.fleet import FleetView, MemberStatus

from .. import format as fmt
from ..text import text
from .base import Blade
from .tokens import client_login


@dataclass(frozen=True)
class OverviewData:
    rules: list[CacheRule]
    credential_sets: list[CredentialSet]
    size: CacheSize
    repositories: int
    totals: Totals
    errors: list[RecordedEvent]
    max_size: str = ""
    storage: StorageConfig = FilesystemStorage()
    tokens: int = 0
    minutes: list[Minute] = field(default_factory=list)
    rule_sizes: dict[str, int] = field(default_factory=dict)
    #: the fleet's heartbeats (None: not a bucket, or no fleet configured), or why they could not be read
    fleet: FleetView | None = None
    fleet_error: str | None = None


#: the charts of the last hour: (id, label, what each minute contributes)
TRENDS = (
    ("requests", "Requests", lambda m: float(m.requests)),
    ("hit-ratio", "Hit ratio", lambda m: m.hit_ratio or 0.0),
    ("served", "Served", lambda m: float(m.bytes_served)),
    ("fetched", "Upstream", lambda m: float(m.bytes_fetched)),
)
#: at most this many rules get a bar (the largest); the others are summed on one line
BAR_RULES = 5
BAR_WIDTH = 20


def size_bars(sizes: dict[str, int], rules: list[CacheRule]) -> Table:
    """One bar per rule, longest for the largest cache, every rule listed (an empty one with no bar)."""
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, max_width=16)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, justify="right")
    ranked = sorted(((sizes.get(r.name, 0), r.name) for r in rules), key=lambda x: (-x[0], x[1]))
    largest = ranked[0][0] if ranked else 0
    for size, name in ranked[:BAR_RULES]:
        filled = round(BAR_WIDTH * size / largest) if largest else 0
        bar = text("█" * filled, "green")
        bar.append_text(text("░" * (BAR_WIDTH - filled), "dim"))
        table.add_row(text(name, limit=16), bar, text(fmt.size(size)))
    rest = ranked[BAR_RULES:]
    if rest:
        table.add_row(text(f"+{len(rest)} more", "dim"), text(""), text(fmt.size(sum(s for s, _ in rest))))
    return table


#: fleet members listed at most (this node first, then the live ones); the rest are counted on one line
FLEET_ROWS = 6
#: from this blade width on, a member's address is listed too
FLEET_WIDE = 90


def fleet_summary(view: FleetView) -> Text:
    """One line: members, live, configured otherwise, and this node."""
    live = view.live
    line = Text()  # each piece keeps its own style
    line.append_text(text(f"{fmt.count(len(view.members), 'member')}, {fmt.count(len(live))} live",
                          "" if len(live) == len(view.members) else "yellow"))
    others = sum(not view.alike(m) for m in live)
    if others:
        line.append_text(text(f", {fmt.count(others)} configured differently (no sharing)", "yellow"))
    line.append_text(text(" · this node "))
    if view.node_id is None:
        line.append_text(text("has not joined yet (it joins when it serves)", "yellow"))
    else:
        line.append_text(text(view.node_id, "bold", limit=20))
        if view.me is None:
            line.append_text(text(" (no heartbeat: not serving?)", "yellow"))
    return line


def fleet_table(view: FleetView, wide: bool) -> Table:
    """A line per member: id, live or gone with its last heartbeat's age, version, and (wide) its address."""
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    if wide:
        table.add_column(no_wrap=True, overflow="ellipsis")
    table.add_column(no_wrap=True)

    def order(m: MemberStatus) -> tuple[bool, bool, str]:
        return (not view.is_me(m), not m.live, m.member.node_id)

    members = sorted(view.members, key=order)
    for m in members[:FLEET_ROWS]:
        seen = f"{m.age:.0f}s ago"
        state = text(f"live, {seen}", "green") if m.live else text(f"gone, {seen}", "red")
        note = text("this node", "bold") if view.is_me(m) else (
            text("") if view.alike(m) else text("configured differently", "yellow"))
        cells = [text(m.member.node_id, "bold" if view.is_me(m) else "", limit=20), state,
                 text(m.member.version, "dim", limit=24 if wide else 12)]
        if wide:
            cells.append(text(m.member.address, limit=48))
        table.add_row(*cells, note)
    rest = members[FLEET_ROWS:]
    if rest:
        table.add_row(text(f"+{len(rest)} more", "dim"), text(f"{sum(m.live for m in rest)} live", "dim"),
                      *([text("")] * (3 if wide else 2)))
    return table


class OverviewBlade(Blade):
    REFRESH_SECONDS = 2.0

    data: OverviewData | None = None

    def compose(self) -> ComposeResult:
        yield Label("Overview", classes="blade-title")
        with VerticalScroll(id="overview-body"):
            yield Static("", id="overview-facts")
            # shown once members are read (s3 storage in a fleet)
            fleet_title = Label("Fleet", id="overview-fleet-title", classes="section-title")
            fleet_members = Static("", id="overview-fleet")
            fleet_title.display = fleet_members.display = False
            yield fleet_title
            yield fleet_members
            yield Label("Last hour, per minute", id="overview-hour", classes="section-title")
            for trend_id, label, _ in TRENDS:
                with Horizontal(classes="trend"):
                    yield Label(label, classes="trend-label")
                    yield Sparkline([], id=f"trend-{trend_id}")
                    yield Static("", id=f"trend-{trend_id}-value", classes="trend-value")
            yield Label("Cache size by rule", classes="section-title")
            yield Static("", id="overview-bars")
            yield Label("Recent errors", classes="section-title")
            yield Static("", id="overview-errors")

    @work(thread=True, exclusive=True, group="overview-load")
    def load_in_thread(self) -> None:
        now = self.app.clock()  # type: ignore[attr-defined]

        def read(b) -> OverviewData:
            usage = b.stats.rule_usage()
            return OverviewData(b.control.list_rules(), b.control.list_credential_sets(), b.stats.cache_size(),
                                sum(u.repositories for u in usage.values()), b.stats.totals(),
                                b.stats.recent_errors(5), b.control.settings()["max-size"], b.control.storage(),
                                len(b.control.list_tokens()), b.stats.per_minute(60, now), b.stats.rule_sizes())

        data = self.backend.call(read)
        if isinstance(data.storage, S3Storage):  # read from the bucket outside the backend's lock
            try:
                data = replace(data, fleet=self.backend.fleet())
            except RegcacheError as exc:
                data = replace(data, fleet_error=str(exc))
        self.deliver(self._show, data)

    def _show(self, data: OverviewData) -> None:
        self.data = data
        status = self.app.proxy_status  # type: ignore[attr-defined]
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column()
        state_style = "green" if status.state == "running" else "bold red" if status.error else "yellow"
        # a str in a rich Table cell is parsed as markup: every cell is text
        facts.add_row(text("Proxy"), text(status.label.removeprefix("proxy "), state_style))
        if status.state == "running":
            facts.add_row(text("Metrics"), text(f"http://{status.address}/metrics (Prometheus)"))
        wildcards = sum(r.is_wildcard for r in data.rules)
        facts.add_row(text("Cache rules"), text(f"{fmt.count(len(data.rules))} ({fmt.count(wildcards)} wildcard)"))
        unhealthy = sum(cs.health.status is HealthStatus.UNHEALTHY for cs in data.credential_sets)
        facts.add_row(text("Credentials"), text(fmt.count(len(data.credential_sets))
                                                + (f" ({fmt.count(unhealthy)} unhealthy)" if unhealthy else ""),
                                                "bold red" if unhealthy else ""))
        facts.add_row(text("Client login"), text(client_login(data.tokens), "bold" if data.tokens else ""))
        facts.add_row(text("Storage"), text(fmt.storage(data.storage)))
        if data.fleet_error is not None:
            facts.add_row(text("Fleet"), text(f"members not read: {data.fleet_error}", "bold red"))
        elif data.fleet is not None:
            facts.add_row(text("Fleet"), fleet_summary(data.fleet))
        elif isinstance(data.storage, S3Storage):
            facts.add_row(text("Fleet"), text("none: set fleet-address and fleet-secret to download each blob "
                                              "once for all nodes", "dim"))
        limit = f" of {data.max_size} max" if data.max_size else ""
        facts.add_row(text("Cache size"), text(f"{fmt.size(data.size.blob_bytes)}{limit} in "
                                               f"{fmt.count(data.size.blobs, 'blob')}, "
                                               f"{fmt.count(data.size.manifests, 'manifest')}, "
                                               f"{fmt.count(data.repositories, 'repository', 'repositories')}"))
        t = data.totals
        facts.add_row(text("Hit ratio"), text(f"{fmt.ratio(t.hit_ratio)} ({fmt.count(t.hits, 'hit')}, "
                                              f"{fmt.count(t.misses, 'miss', 'misses')}, {fmt.count(t.stale)} stale, "
                                              f"{fmt.count(t.errors, 'error')})"))
        facts.add_row(text("Served"), text(f"{fmt.size(t.bytes_served)} to clients, "
                                           f"{fmt.size(t.bytes_fetched)} fetched upstream"))
        self.query_one("#overview-facts", Static).update(facts)
        self._show_fleet(data.fleet)
        self._show_trends(data.minutes)
        self.query_one("#overview-bars", Static).update(
            size_bars(data.rule_sizes, data.rules) if data.rules else text("No cache rules yet.", "dim"))
        if not data.errors:
            self.query_one("#overview-errors", Static).update(text("None.", "dim"))
            return
        lines = Text()
        for recorded in data.errors:
            e = recorded.event
            lines.append_text(text(f"{fmt.when(e.ts)}  ", "dim"))
            lines.append_text(text(f"{e.repository}:{fmt.reference(e.reference)}  ", "bold"))
            lines.append_text(text(f"HTTP {e.status}"))
            lines.append("\n")
            lines.append_text(text(f"  {e.detail or ''}", "red"))
            lines.append("\n")
        lines.rstrip()
        self.query_one("#overview-errors", Static).update(lines)

    def _show_fleet(self, view: FleetView | None) -> None:
        shown = view is not None and bool(view.members)
        self.query_one("#overview-fleet-title", Label).display = shown
        fleet = self.query_one("#overview-fleet", Static)
        fleet.display = shown
        if view is not None and shown:
            fleet.update(fleet_table(view, self.size.width >= FLEET_WIDE))

    def on_resize(self) -> None:
        if self.data is not None:  # the members' addresses come and go with the width
            self._show_fleet(self.data.fleet)

    def _show_trends(self, minutes: list[Minute]) -> None:
        if minutes:
            self.query_one("#overview-hour", Label).update(text(
                f"Last hour, per minute ({minutes[0].start:%H:%M}-{minutes[-1].start:%H:%M} UTC)"))
        for trend_id, _, value in TRENDS:
            self.query_one(f"#trend-{trend_id}", Sparkline).data = [value(m) for m in minutes]
        requests = sum(m.requests for m in minutes)
        hits, answered = sum(m.hits for m in minutes), sum(m.answered for m in minutes)
        figures = {"requests": f"{requests:,} in all", "hit-ratio": fmt.ratio(hits / answered if answered else None),
                   "served": fmt.size(sum(m.bytes_served for m in minutes)),
                   "fetched": fmt.size(sum(m.bytes_fetched for m in minutes))}
        for trend_id, figure in figures.items():
            self.query_one(f"#trend-{trend_id}-value", Static).update(text(figure))
