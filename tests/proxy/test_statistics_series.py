"""The Overview's charts read per-minute figures of the last hour and cache sizes per rule from the engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from regcache.proxy.core.models import JOINED_DOWNLOAD, PullEvent, Result
from regcache.proxy.pull.events import event_row
from regcache.proxy.state.statistics import CacheStatistics
from regcache.proxy.state.store import StateStore

NOW = datetime(2026, 3, 14, 10, 30, 42, tzinfo=timezone.utc)


def _event(ts: datetime, result: str, kind: str = "blob", size: int = 100, detail: str | None = None) -> dict:
    return event_row(PullEvent("10.0.0.1", "GET", kind, "app", "sha256:" + "a" * 64, Result(result), 200, "app-rule",
                               size, 1.0, detail, ts))


def test_per_minute_counts_each_minute_of_the_last_hour(home):
    store = StateStore.open(home)
    try:
        store.insert_events([
            _event(NOW - timedelta(minutes=90), "hit"),  # before the hour: not counted
            _event(NOW - timedelta(minutes=59, seconds=42), "miss", size=1000),  # the first minute shown
            _event(NOW - timedelta(minutes=59, seconds=30), "miss", size=1000, detail=JOINED_DOWNLOAD),
            _event(NOW - timedelta(minutes=5), "hit", kind="manifest", size=10),
            _event(NOW - timedelta(minutes=5), "stale", kind="manifest", size=10),
            _event(NOW - timedelta(minutes=5), "error", size=0),
            _event(NOW, "hit", size=7),
        ])
        series = CacheStatistics(store).per_minute(60, NOW)
    finally:
        store.close()
    assert len(series) == 60
    assert series[0].start == datetime(2026, 3, 14, 9, 31, tzinfo=timezone.utc)
    assert series[-1].start == datetime(2026, 3, 14, 10, 30, tzinfo=timezone.utc)
    first, five_ago, last = series[0], series[-6], series[-1]
    assert (first.requests, first.hits, first.bytes_served, first.bytes_fetched) == (2, 0, 2000, 1000)
    assert (five_ago.requests, five_ago.hits, five_ago.answered, five_ago.hit_ratio) == (3, 2, 2, 1.0)
    assert five_ago.bytes_served == 20  # an error serves nothing
    assert (last.requests, last.bytes_served) == (1, 7)
    assert sum(m.requests for m in series) == 6  # the event 90 minutes ago is not in the hour
    assert series[10].requests == 0 and series[10].hit_ratio is None


def test_cache_size_per_rule_counts_each_blob_once_per_rule(home):
    store = StateStore.open(home)
    try:
        store.record_repository("team/a", "team-rule", "ghcr.io/acme/a")
        store.record_repository("team/b", "team-rule", "ghcr.io/acme/b")
        store.record_repository("lib/x", "lib-rule", "docker.io/library/x")
        store.put_blob("sha256:" + "1" * 64, 1000, "p1")
        store.put_blob("sha256:" + "2" * 64, 300, "p2")
        for repository in ("team/a", "team/b", "lib/x"):  # one blob in all three repositories
            store.link(repository, "src", "sha256:" + "1" * 64, "blob")
        store.link("team/b", "src", "sha256:" + "2" * 64, "blob")
        sizes = CacheStatistics(store).rule_sizes()
    finally:
        store.close()
    assert sizes == {"team-rule": 1300, "lib-rule": 1000}
