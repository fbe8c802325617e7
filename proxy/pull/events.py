"""The pull-event log: requests record events without waiting; one writer task batches them into SQLite."""

from __future__ import annotations

import dataclasses
import logging

import anyio
from anyio.abc import TaskStatus

from regcache.proxy.core.models import PullEvent
from regcache.proxy.pull.metrics import ProxyMetrics
from regcache.proxy.state.store import AsyncStateStore

log = logging.getLogger("regcache.events")

BATCH = 500


class EventLog:
    """Buffers pull events in memory and writes them in batches; ``run`` is the writer task."""

    def __init__(self, state: AsyncStateStore, buffer: int = 100_000, metrics: ProxyMetrics | None = None) -> None:
        self._state = state
        self._metrics = metrics
        self._send, self._receive = anyio.create_memory_object_stream[PullEvent](max_buffer_size=buffer)
        self.dropped = 0

    def record(self, event: PullEvent) -> None:
        """Queue ``event``; never blocks a request (a full buffer drops and counts)."""
        if self._metrics is not None:
            self._metrics.observe(event)
        try:
            self._send.send_nowait(event)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.events_dropped.inc()
            if self.dropped == 1 or self.dropped % 10_000 == 0:  # said, not repeated for each one
                log.warning("%d pull event(s) not logged: the event writer fell behind", self.dropped)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write events until ``close()``; what is queued at close is still written."""
        task_status.started()
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                rows = [event_row(e) for e in batch]
                with anyio.CancelScope(shield=True):
                    try:
                        await self._state.run(lambda s: s.insert_events(rows))
                    except Exception:  # the log must not take the proxy down with it
                        log.exception("could not write %d pull events", len(rows))

    def close(self) -> None:
        self._send.close()


def event_row(event: PullEvent) -> dict:
    row = dataclasses.asdict(event)
    row["ts"] = event.ts.isoformat()
    return row
