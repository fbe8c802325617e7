"""The pull-event log: requests record events without waiting; one writer task batches them into SQLite,
with the access times and pull counts the requests noted (:class:`Accesses`) in the same transaction."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timezone

import anyio
from anyio.abc import TaskStatus

from regcache.proxy.core.models import PullEvent
from regcache.proxy.pull.metrics import ProxyMetrics
from regcache.proxy.state.store import AsyncStateStore, StateStore

log = logging.getLogger("regcache.events")

BATCH = 500
#: accesses noted without an event (a job's pulls) wait at most this long to be written
ACCESS_FLUSH_INTERVAL = 1.0


class Accesses:
    """Blob access times and repository pulls not written yet: noted in memory by a request (no worker-thread
    hop, no write of its own), written by the event writer with its next batch, at most
    ACCESS_FLUSH_INTERVAL later, and at its end (a clean stop loses none).

    Eviction reads them (least recently pulled first, nothing pulled within a minute): they are late by
    less than a second while the writer keeps up.
    """

    def __init__(self) -> None:
        self._blobs: dict[str, datetime] = {}
        #: repository -> [rule, upstream, pulls, first, last]
        self._pulls: dict[str, list] = {}

    def blob(self, digest: str) -> None:
        """``digest`` was served now (a hit)."""
        self._blobs[digest] = datetime.now(timezone.utc)

    def pull(self, repository: str, rule: str, upstream: str) -> None:
        """A manifest of ``repository`` was pulled now (through ``rule``, from ``upstream``)."""
        now = datetime.now(timezone.utc)
        pending = self._pulls.get(repository)
        if pending is None:
            self._pulls[repository] = [rule, upstream, 1, now, now]
        else:
            pending[0], pending[1], pending[4] = rule, upstream, now
            pending[2] += 1

    def __bool__(self) -> bool:
        return bool(self._blobs or self._pulls)

    def take(self) -> tuple[dict[str, datetime], dict[str, list]]:
        """What is noted, forgotten here: the caller writes it (:meth:`write`)."""
        taken = self._blobs, self._pulls
        self._blobs, self._pulls = {}, {}
        return taken

    @staticmethod
    def write(store: StateStore, taken: tuple[dict[str, datetime], dict[str, list]]) -> None:
        blobs, pulls = taken
        for digest, when in blobs.items():
            store.touch_blob(digest, when)
        for repository, (rule, upstream, count, first, last) in pulls.items():
            store.record_repository(repository, rule, upstream, last, pulls=count, first=first)


class EventLog:
    """Buffers pull events in memory and writes them in batches; ``run`` is the writer task."""

    def __init__(self, state: AsyncStateStore, buffer: int = 100_000, metrics: ProxyMetrics | None = None) -> None:
        self._state = state
        self._metrics = metrics
        self._send, self._receive = anyio.create_memory_object_stream[PullEvent](max_buffer_size=buffer)
        self.dropped = 0
        #: what requests noted beside their events, written with them
        self.accesses = Accesses()

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
        """Write events (and accesses) until ``close()``; what is queued at close is still written.

        Accesses noted without events are written by a ticker beside the receive loop: a receive is never
        cancelled by a timeout, since an event handed to a receiver that is then cancelled would be lost."""
        task_status.started()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._flush_accesses)
            async with self._receive:
                async for first in self._receive:
                    batch = [first]
                    while len(batch) < BATCH:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await self._write(batch)
            tasks.cancel_scope.cancel()
        await self._write([])  # what was noted since the last batch

    async def _flush_accesses(self) -> None:
        while True:
            await anyio.sleep(ACCESS_FLUSH_INTERVAL)
            await self._write([])

    async def _write(self, batch: list[PullEvent]) -> None:
        if not batch and not self.accesses:
            return
        rows = [event_row(e) for e in batch]
        taken = self.accesses.take()

        def write(s: StateStore) -> None:
            with s.transaction():
                s.insert_events(rows)
                Accesses.write(s, taken)

        with anyio.CancelScope(shield=True):
            try:
                await self._state.run(write)
            except Exception:  # the log must not take the proxy down with it
                log.exception("could not write %d pull events", len(rows))

    def close(self) -> None:
        self._send.close()


_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(PullEvent))


def event_row(event: PullEvent) -> dict:
    """The events-table row of ``event`` (its fields as they are: dataclasses.asdict deep-copies each one)."""
    row = {name: getattr(event, name) for name in _EVENT_FIELDS}
    row["ts"] = event.ts.isoformat()
    return row
