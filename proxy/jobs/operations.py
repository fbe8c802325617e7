"""Operations: the work an operator starts on the cache without a client (warm, rule test, tag sync, gc).

The CLI and the TUI both call this facade. It works on one PullThroughCache: the CLI opens one of its
own (:meth:`Operations.open`); the TUI uses the embedded proxy's (reached from its worker threads through
the proxy's BlockingPortal), so a warm and a client's pull of the same blob share one download, and
no job holds a lock that the TUI's screens wait on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import anyio

from regcache.proxy.config.control import ControlPlane, FleetSettings, Purge
from regcache.proxy.core.errors import NotFoundError
from regcache.proxy.core.settings import StorageError
from regcache.proxy.jobs.eviction import (
    DEFAULT_MIN_IDLE,
    CollectionReport,
    EvictionCandidate,
    EvictionPlan,
    collect_garbage,
    evict,
)
from regcache.proxy.jobs.prefetch import (
    OnProgress,
    Record,
    RuleProbe,
    WarmResult,
    parse_image,
    probe_rule,
    pull_through,
    warm_image,
)
from regcache.proxy.jobs.tagsync import SyncOutcome, sync_rule
from regcache.proxy.pull.cache import LoginCheck, PullThroughCache
from regcache.proxy.pull.events import EventLog
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import StateStore
from regcache.proxy.storage.backend import BucketBackend
from regcache.proxy.storage.fleet import FleetView, read_fleet, read_fleet_in

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What a purge removed: tags and links (``purge``), and the blobs and bytes deleted with them."""

    purge: Purge
    blobs_deleted: int
    bytes_freed: int
    #: tags and links dropped from the shared bucket (s3 storage), and why that failed if it did
    shared_removed: int = 0
    shared_error: str | None = None


class Operations:
    """Warm, rule test, tag sync and gc over one PullThroughCache; call it from that cache's event loop."""

    def __init__(self, cache: PullThroughCache, home: Path, secrets: SecretResolver | None = None,
                 record: Record | None = None) -> None:
        self.cache = cache
        self.home = home
        self.secrets = secrets or cache.secrets
        #: where a warm's pull events go (the proxy's event log: counted like a client's pulls)
        self.record = record

    @classmethod
    @asynccontextmanager
    async def open(cls, home: Path, secrets: SecretResolver | None = None) -> AsyncIterator[Operations]:
        """Operations on a cache of their own for ``home`` (downloads finish before the block ends), with an
        event log of their own: a warm from the CLI is in the Activity log and the statistics too."""
        async with pull_through(home, secrets) as cache, anyio.create_task_group() as writer:
            events = EventLog(cache.state)
            cache.accesses = events.accesses
            await writer.start(events.run)
            try:
                yield cls(cache, home, secrets, record=events.record)
            finally:
                events.close()  # the writer writes what is queued, then ends

    @classmethod
    def run_alone(cls, home: Path, secrets: SecretResolver | None,
                  job: Callable[[Operations], Awaitable[T]]) -> T:
        """Run ``job`` to completion on an engine of its own, from synchronous code (the CLI, or a TUI
        whose embedded proxy's engine is not running)."""
        async def run() -> T:
            async with cls.open(home, secrets) as operations:
                return await job(operations)

        return anyio.run(run)

    async def warm(self, image: str, platform: str | None = "linux/amd64", *,
                   on_progress: OnProgress | None = None) -> WarmResult:
        """Pull ``image`` (one platform of an index, or every one with ``platform=None``) into the cache;
        ``on_progress`` hears each layer's bytes, rate and time left (in the engine's loop: never block in it)."""
        repository, reference = parse_image(image)
        match = await self.cache.resolve(repository)
        return await warm_image(self.cache, match, reference, platform, on_progress=on_progress, record=self.record)

    async def test_rule(self, rule_name: str, image: str) -> RuleProbe:
        """What rule ``rule_name`` maps ``image`` to, whether its credentials work, the upstream digest."""
        return await probe_rule(self.cache, rule_name, image)

    async def check_credential_set(self, name: str) -> LoginCheck:
        """Log in to the upstream with credential set ``name`` now and record the answer as its health."""
        return await self.cache.check_credential_set(name)

    async def sync_tags(self, rule_name: str) -> list[SyncOutcome]:
        """Fetch the new or moved tags of rule ``rule_name`` that match its tag filter, now."""
        rule = await self.cache.state.run(lambda s: s.cache_rule(rule_name))
        if rule is None:
            raise NotFoundError(f"cache rule {rule_name!r} does not exist (see `regcache cache list`)", field="name")
        return await sync_rule(self.cache, rule)

    async def purge(self, repository: str, tag: str | None = None, digest: str | None = None) -> PurgeReport:
        """Remove a tag, a digest or a whole cached repository (:meth:`ControlPlane.purge`), then delete the
        blobs no repository links any more, as the gc evicts (the storage backend releases them first)."""
        purged = await self.cache.state.run(lambda s: ControlPlane(s, self.secrets).purge(repository, tag, digest))
        shared_removed, shared_error = 0, None
        if self.cache.shared is not None:  # s3 storage: the other nodes look in the bucket before the upstream
            try:
                shared_removed = await self.cache.shared.forget(purged.source_tags, purged.source_links)
            except StorageError as exc:  # what this node holds is purged already: say what is left, not fail
                shared_error = (f"the shared bucket's tags and links could not be removed ({exc}); other nodes may "
                                f"still serve it from there: delete them when the bucket is back (docs/scale-out.md)")
        plan = EvictionPlan(tuple(EvictionCandidate(d, size, path, last_access, f"purged from {repository}")
                                  for d, size, path, last_access in purged.orphans), (), 0, None)
        freed = await evict(self.cache.state, plan, self.cache.blobs.backend) if plan.candidates else 0
        return PurgeReport(purged, len(plan.candidates), freed, shared_removed, shared_error)

    async def fleet(self, settings: FleetSettings) -> FleetView:
        """The fleet's heartbeats in the bucket, as `regcache fleet status` reads them, through this engine's
        connection to the bucket (a connection of its own if the engine's storage is not that bucket)."""
        backend = self.cache.blobs.backend
        if isinstance(backend, BucketBackend) and backend.objects.config == settings.storage:
            return await read_fleet(backend.objects, settings.node_id, settings.fingerprint)
        return await read_fleet_in(settings.storage, self.secrets, settings.node_id, settings.fingerprint)

    async def collect_garbage(self, *, min_idle: float = DEFAULT_MIN_IDLE,
                              stale_uploads_after: timedelta | None = None, dry_run: bool = False,
                              only_if_configured: bool = False) -> CollectionReport:
        """Evict by retention and max-size and abort stale bucket uploads, on a connection of its own (a
        worker thread), so neither pulls nor the TUI wait on it."""
        def collect() -> CollectionReport:
            store = StateStore(self.home)
            try:
                return collect_garbage(store, self.secrets, min_idle, stale_uploads_after, dry_run,
                                       only_if_configured)
            finally:
                store.close()

        return await anyio.to_thread.run_sync(collect)
