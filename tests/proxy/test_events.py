"""The event log never blocks a request; what it cannot keep is counted and exposed, not silently lost."""

from __future__ import annotations

from regcache.proxy.core.models import PullEvent
from regcache.proxy.pull.events import EventLog
from regcache.proxy.pull.metrics import ProxyMetrics


def _event(n: int) -> PullEvent:
    return PullEvent("127.0.0.1", "GET", "blob", "app", f"sha256:{n:064x}", "hit", 200, "app-rule", 10)


def test_a_full_buffer_drops_counts_and_exposes_the_loss(caplog):
    metrics = ProxyMetrics()
    events = EventLog(state=None, buffer=2, metrics=metrics)  # no writer runs: the buffer fills
    for n in range(5):
        events.record(_event(n))
    assert events.dropped == 3
    assert b"regcache_events_dropped_total 3.0" in metrics.exposition()
    assert b'regcache_requests_total{kind="blob",result="hit",rule="app-rule"} 5.0' in metrics.exposition()
    assert [r.getMessage() for r in caplog.records] == ["1 pull event(s) not logged: the event writer fell behind"]
