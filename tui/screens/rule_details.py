"""Details of a cache rule: what it maps, the repositories it cached with tags, sizes and hits, the digest of
each tag; purge a tag, a digest or a whole repository (e.g. after an upstream served bad content)."""

from __future__ import annotations

from operator import attrgetter

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from regcache.proxy.core.models import CacheRule, TagSyncRecord
from regcache.proxy.core.units import format_duration
from regcache.proxy.state.statistics import CachedRepository

from .. import format as fmt
from ..text import notify, notify_refusal, printable, text
from ..widgets.key_bar import KeyBar
from ..widgets.row_table import RowTable
from .confirm import ConfirmScreen


class RuleDetailsScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q", "close", "Close", id="details.close"),
        Binding("p", "purge_tag", "Purge tag", id="details.purge-tag"),
        Binding("P", "purge_digest", "Purge digest", id="details.purge-digest"),
        Binding("x", "purge_repository", "Purge repository", id="details.purge-repository"),
    ]

    def __init__(self, rule: CacheRule) -> None:
        super().__init__()
        self.rule = rule
        #: the repository whose tags are listed
        self.repository: str | None = None

    def compose(self) -> ComposeResult:
        rule = self.rule
        with Vertical(classes="dialog details"):
            yield Label(text(f"Cache rule {rule.name}"), classes="title")
            yield Static(text(
                f"Maps     {printable(rule.target_repository)} => {printable(rule.source_repository)}\n"
                f"Creds    {printable(rule.credential_set or '(anonymous)')} · "
                f"created {rule.created_at.strftime('%Y-%m-%d %H:%M UTC')}\n"
                f"Policy   fresh for {format_duration(rule.freshness or 0)} · "
                f"stale on upstream errors: {'yes' if rule.serve_stale_on_error else 'no'} · "
                f"deleted tags: {'served' if rule.serve_stale_if_deleted else 'not served'} · "
                f"retention: {format_duration(rule.retention) or 'keep'}", multiline=True),
                classes="detail")
            yield Static("", id="sync")
            yield Static("", id="summary")
            table = RowTable(id="repositories")
            table.add_columns("Repository", "Tags", "Size", "Last pull", "Hits", "Misses")
            yield table
            yield Static("", id="tags-title")
            tags = RowTable(id="tags")
            tags.add_columns("Tag", "Digest")
            yield tags
        yield KeyBar()

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
        table = self.query_one("#repositories", RowTable)
        hits = sum(r.hits for r in repos)
        misses = sum(r.misses for r in repos)
        ratio = fmt.ratio(hits / (hits + misses)) if hits + misses else "-"
        self.query_one("#summary", Static).update(text(
            f"{fmt.count(len(repos), 'cached repository', 'cached repositories')} · "
            f"{fmt.size(sum(r.size for r in repos))} · hit ratio {ratio}"))
        rows = []
        for repo in repos:
            tags = ", ".join(repo.tags[:4]) + (f" +{len(repo.tags) - 4}" if len(repo.tags) > 4 else "")
            rows.append((repo.name, (text(repo.name), text(tags or "-"), text(fmt.size(repo.size)),
                                     text(fmt.when(repo.last_pull)), text(repo.hits), text(repo.misses))))
        table.show_rows(rows)  # the cursor stays on the repository it was on
        names = [r.name for r in repos]
        self.repository = names[table.cursor_row] if names else None
        self.load_tags(self.repository)
        if not repos:
            self.query_one("#summary", Static).update(text("Nothing cached yet: the first pull through this rule "
                                                           "fetches from the upstream."))

    @on(DataTable.RowHighlighted, "#repositories")
    def _repository_highlighted(self, event: DataTable.RowHighlighted) -> None:
        name = str(event.row_key.value) if event.row_key is not None else None
        if name != self.repository:
            self.repository = name
            self.load_tags(name)

    @work(thread=True, exclusive=True, group="details-tags")
    def load_tags(self, repository: str | None) -> None:
        tags = self.app.backend.call(  # type: ignore[attr-defined]
            lambda b: b.cached_tags(repository)) if repository is not None else []
        self.app.call_from_thread(self._show_tags, repository, tags)

    def _show_tags(self, repository: str | None, tags: list[tuple[str, str]]) -> None:
        if repository != self.repository:
            return  # another repository was highlighted meanwhile
        self.query_one("#tags", RowTable).show_rows([(f"{i}", (text(tag), text(digest)))
                                                      for i, (tag, digest) in enumerate(tags)])
        self._tags = tags
        self.query_one("#tags-title", Static).update(text(
            f"Tags of {repository}: p purges a tag, P its digest, x the whole repository" if repository else ""))

    _tags: list[tuple[str, str]] = []

    def _selected_tag(self) -> tuple[str, str] | None:
        table = self.query_one("#tags", DataTable)
        if not self._tags or table.row_count == 0:
            notify(self, "No cached tag selected", severity="warning")
            return None
        return self._tags[table.cursor_row]

    # -- purge -----------------------------------------------------------------------------------

    def action_purge_tag(self) -> None:
        selected = self._selected_tag()
        if selected is not None and self.repository is not None:
            tag, digest = selected
            self._confirm_purge(f"Purge {self.repository}:{tag}?",
                                f"The tag goes, with its manifest ({printable(digest)}) unless another tag keeps it, "
                                f"and blobs no other repository links.\nThe next pull fetches it from the upstream.",
                                self.repository, tag, None)

    def action_purge_digest(self) -> None:
        selected = self._selected_tag()
        if selected is not None and self.repository is not None:
            _, digest = selected
            self._confirm_purge(f"Purge {self.repository}@{digest}?",
                                "Every tag pointing at it goes, with what it alone refers to and blobs no other "
                                "repository links.\nThe next pull fetches it from the upstream.",
                                self.repository, None, digest)

    def action_purge_repository(self) -> None:
        if self.repository is None:
            notify(self, "No cached repository selected", severity="warning")
            return
        self._confirm_purge(f"Purge the cached repository {self.repository}?",
                            "All its tags, manifests and links go, and blobs no other repository links.\n"
                            "The next pull fetches it from the upstream.", self.repository, None, None)

    def _confirm_purge(self, title: str, detail: str, repository: str, tag: str | None, digest: str | None) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.run_purge(repository, tag, digest)

        self.app.push_screen(ConfirmScreen(title, detail), answered)

    @work(thread=True, group="details-purge")
    def run_purge(self, repository: str, tag: str | None, digest: str | None) -> None:
        try:
            report = self.app.backend.run_job(  # type: ignore[attr-defined]
                lambda ops: ops.purge(repository, tag, digest))
        except BaseException as exc:
            notify_refusal(self, exc)
            return
        what = f"{repository}:{tag}" if tag else f"{repository}@{fmt.reference(digest)}" if digest else repository
        self.app.call_from_thread(notify, self, f"Purged {what}: {fmt.count(len(report.purge.tags), 'tag')}, "
                                                f"{fmt.count(report.blobs_deleted, 'blob')} deleted "
                                                f"({fmt.size(report.bytes_freed)})")
        if report.shared_error:
            self.app.call_from_thread(notify, self, report.shared_error, severity="warning", timeout=15)
        self.app.call_from_thread(self.load)

    def action_close(self) -> None:
        self.dismiss(None)
