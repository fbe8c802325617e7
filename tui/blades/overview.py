"""Overview: proxy state, rules, cache size, hit ratio, recent errors."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.widgets import Label, Static

from regcache.proxy.core.models import CacheRule, CredentialSet, HealthStatus
from regcache.proxy.core.settings import FilesystemStorage, StorageConfig
from regcache.proxy.state.statistics import CacheSize, RecordedEvent, Totals

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


class OverviewBlade(Blade):
    REFRESH_SECONDS = 2.0

    data: OverviewData | None = None

    def compose(self) -> ComposeResult:
        yield Label("Overview", classes="blade-title")
        yield Static("", id="overview-facts")
        yield Label("Recent errors", classes="section-title")
        yield Static("", id="overview-errors")

    @work(thread=True, exclusive=True, group="overview-load")
    def load_in_thread(self) -> None:
        def read(b) -> OverviewData:
            usage = b.stats.rule_usage()
            return OverviewData(b.control.list_rules(), b.control.list_credential_sets(), b.stats.cache_size(),
                                sum(u.repositories for u in usage.values()), b.stats.totals(),
                                b.stats.recent_errors(5), b.control.settings()["max-size"], b.control.storage(),
                                len(b.control.list_tokens()))

        data = self.backend.call(read)
        self.app.call_from_thread(self._show, data)

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
