"""Overview: proxy state, rules, cache size, hit ratio; the last hour as charts, cache size per rule as bars;
recent errors."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, Sparkline, Static

from regcache.proxy.core.models import CacheRule, CredentialSet, HealthStatus
from regcache.proxy.core.settings import FilesystemStorage, StorageConfig
from regcache.proxy.state.statistics import CacheSize, Minute, RecordedEvent, Totals

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


class OverviewBlade(Blade):
    REFRESH_SECONDS = 2.0

    data: OverviewData | None = None

    def compose(self) -> ComposeResult:
        yield Label("Overview", classes="blade-title")
        with VerticalScroll(id="overview-body"):
            yield Static("", id="overview-facts")
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
