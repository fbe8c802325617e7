"""Read-only views over what the proxy recorded: the Overview, per-rule usage and the Activity log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from regcache.proxy.core.models import PullEvent, Result, TagSyncRecord
from regcache.proxy.state.store import StateStore


@dataclass(frozen=True, slots=True)
class Totals:
    """Running totals over every recorded pull event."""

    hits: int
    misses: int
    stale: int
    errors: int
    bytes_served: int
    bytes_fetched: int

    @property
    def requests(self) -> int:
        return self.hits + self.misses + self.stale + self.errors

    @property
    def hit_ratio(self) -> float | None:
        """Hits (stale serves count as hits) over answered requests; None before any."""
        answered = self.hits + self.stale + self.misses
        return (self.hits + self.stale) / answered if answered else None


@dataclass(frozen=True, slots=True)
class CacheSize:
    blob_bytes: int
    blobs: int
    manifests: int


@dataclass(frozen=True, slots=True)
class RuleUsage:
    repositories: int = 0
    hits: int = 0
    misses: int = 0


@dataclass(frozen=True, slots=True)
class CachedRepository:
    name: str
    upstream: str
    tags: tuple[str, ...]
    size: int
    pulls: int
    last_pull: datetime | None
    hits: int
    misses: int


@dataclass(frozen=True, slots=True)
class Minute:
    """What the proxy answered in one minute (the Overview's charts)."""

    start: datetime
    requests: int = 0
    hits: int = 0  # stale serves included, as in Totals.hit_ratio
    answered: int = 0  # requests not answered with an error
    bytes_served: int = 0
    bytes_fetched: int = 0

    @property
    def hit_ratio(self) -> float | None:
        return self.hits / self.answered if self.answered else None


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A pull event as stored, with its id (the Activity log's cursor)."""

    id: int
    event: PullEvent


def _event(row: dict) -> RecordedEvent:
    return RecordedEvent(row["id"], PullEvent(
        row["client"] or "", row["method"] or "", row["kind"], row["repository"] or "", row["reference"] or "",
        Result(row["result"]), row["status"] or 0, row["rule"], row["bytes"] or 0, row["duration_ms"] or 0.0,
        row["detail"], datetime.fromisoformat(row["ts"]), row.get("user_agent")))


class CacheStatistics:
    """Statistics of one state directory, for the TUI and the CLI."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def totals(self) -> Totals:
        t = self.store.event_totals()
        return Totals(t["hit"], t["miss"], t["stale"], t["error"], t["bytes_served"], t["bytes_fetched"])

    def cache_size(self) -> CacheSize:
        return CacheSize(*self.store.cache_size())

    def per_minute(self, minutes: int = 60, now: datetime | None = None) -> list[Minute]:
        """The last ``minutes`` minutes up to ``now`` (UTC), oldest first, one entry for each (quiet ones
        zero); from the events kept (events-max-age shorter than the span leaves its start empty)."""
        now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(second=0, microsecond=0)
        first = now - timedelta(minutes=minutes - 1)
        seen = {key: row for key, *row in self.store.event_minutes(first)}
        series = []
        for i in range(minutes):
            start = first + timedelta(minutes=i)
            row = seen.get(start.strftime("%Y-%m-%dT%H:%M"))
            series.append(Minute(start, *row) if row else Minute(start))
        return series

    def rule_sizes(self) -> dict[str, int]:
        """Bytes cached per rule (a blob two rules share counts in each)."""
        return self.store.rule_sizes()

    def rule_usage(self) -> dict[str, RuleUsage]:
        return {rule: RuleUsage(*usage) for rule, usage in self.store.rule_usage().items()}

    def repositories(self, rule: str) -> list[CachedRepository]:
        return [CachedRepository(r["name"], r["upstream"], tuple(r["tags"]), r["size"], r["pulls"], r["last_pull"],
                                 r["hits"], r["misses"]) for r in self.store.rule_repositories(rule)]

    def events(self, after_id: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        return [_event(row) for row in self.store.events(after_id, limit)]

    def latest_events(self, limit: int = 500) -> list[RecordedEvent]:
        last = self.store.last_event_id()
        return self.events(max(last - limit, 0), limit)

    def recent_errors(self, limit: int = 5) -> list[RecordedEvent]:
        return [_event(row) for row in self.store.recent_errors(limit)]

    def tag_syncs(self, rule: str) -> list[TagSyncRecord]:
        """The last tag-sync result of each repository of ``rule``."""
        return self.store.tag_syncs(rule)
