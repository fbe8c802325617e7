"""Details of a cache rule: what it maps, and the repositories it cached with tags, sizes and hits."""

from __future__ import annotations

from operator import attrgetter

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Static

from regcache.proxy.core.models import CacheRule, TagSyncRecord
from regcache.proxy.core.units import format_duration
from regcache.proxy.state.statistics import CachedRepository

from .. import format as fmt
from ..text import printable, text


class RuleDetailsScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter,q", "close", "Close", id="details.close")]

    def __init__(self, rule: CacheRule) -> None:
        super().__init__()
        self.rule = rule

    def compose(self) -> ComposeResult:
        rule = self.rule
        with Vertical(classes="dialog details"):
            yield Label(text(f"Cache rule {rule.name}"), classes="title")
            yield Static(text(
                f"Target   {printable(rule.target_repository)}\n"
                f"Source   {printable(rule.source_repository)}\n"
                f"Creds    {printable(rule.credential_set or '(anonymous)')}\n"
                f"Created  {fmt.when(rule.created_at)}\n"
                f"Policy   fresh for {format_duration(rule.freshness or 0)} · "
                f"stale on upstream errors: {'yes' if rule.serve_stale_on_error else 'no'} · "
                f"deleted tags: {'served' if rule.serve_stale_if_deleted else 'not served'} · "
                f"retention: {format_duration(rule.retention) or 'keep'}", multiline=True),
                classes="detail")
            yield Static("", id="sync")
            yield Static("", id="summary")
            table: DataTable = DataTable(id="repositories", cursor_type="row", zebra_stripes=True)
            table.add_columns("Repository", "Tags", "Size", "Last pull", "Hits", "Misses")
            yield table
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="details")
    def load(self) -> None:
        repos, syncs = self.app.backend.call(  # type: ignore[attr-defined]
            lambda b: (b.stats.repositories(self.rule.name), b.stats.tag_syncs(self.rule.name)))
        self.app.call_from_thread(self._show, repos, syncs)

    def _show(self, repos: list[CachedRepository], syncs: list[TagSyncRecord] | None = None) -> None:
        rule = self.rule
        if rule.sync_tags:
            last = max((s for s in syncs or [] if s.synced_at is not None), key=attrgetter("synced_at"), default=None)
            status = f"last {fmt.when(last.synced_at)} {last.result}: {last.detail}" if last else "not synced yet"
            self.query_one("#sync", Static).update(text(
                f"Tag sync {rule.sync_tags} every {format_duration(rule.sync_interval or 3600)} · {status}"))
        table = self.query_one(DataTable)
        table.clear()
        hits = sum(r.hits for r in repos)
        misses = sum(r.misses for r in repos)
        ratio = fmt.ratio(hits / (hits + misses)) if hits + misses else "-"
        self.query_one("#summary", Static).update(text(
            f"{fmt.count(len(repos), 'cached repository', 'cached repositories')} · "
            f"{fmt.size(sum(r.size for r in repos))} · hit ratio {ratio}"))
        for repo in repos:
            tags = ", ".join(repo.tags[:4]) + (f" +{len(repo.tags) - 4}" if len(repo.tags) > 4 else "")
            table.add_row(text(repo.name), text(tags or "-"), text(fmt.size(repo.size)), text(fmt.when(repo.last_pull)),
                          text(repo.hits), text(repo.misses), key=repo.name)
        if not repos:
            self.query_one("#summary", Static).update(text("Nothing cached yet: the first pull through this rule "
                                                           "fetches from the upstream."))

    def action_close(self) -> None:
        self.dismiss(None)
