"""Eviction: per-rule retention and the cache size limit, least recently pulled blobs first.

What a download is writing is never a candidate (temporary files are not in the blob table), and
blobs pulled within ``min_idle`` seconds are kept, so a blob that clients are reading stays; a
client that already opened a blob keeps reading it even if it is evicted meanwhile (an open file
outlives its name). Manifests and tags stay unless retention expired their repository: a later
pull of an evicted blob is an ordinary miss.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from regcache.proxy.core.settings import MAX_SIZE_SETTING
from regcache.proxy.state.store import StateStore
from regcache.proxy.storage.backend import BUCKET_PATH_PREFIX, BlobBackend

if TYPE_CHECKING:
    from regcache.proxy.secrets import SecretResolver
    from regcache.proxy.state.store import AsyncStateStore

log = logging.getLogger("regcache.eviction")

#: by default a blob pulled in the last minute is not evicted (clients may still be reading it)
DEFAULT_MIN_IDLE = 60.0


@dataclass(frozen=True, slots=True)
class EvictionCandidate:
    digest: str
    size: int
    path: str  # relative to the state directory
    last_access: datetime | None
    reason: str


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    candidates: tuple[EvictionCandidate, ...]
    expired_repositories: tuple[str, ...]
    cache_bytes: int
    max_size: int | None

    @property
    def bytes_freed(self) -> int:
        return sum(c.size for c in self.candidates)


class Evictor:
    """Plans and applies eviction for one state directory."""

    def __init__(self, store: StateStore, min_idle: float = DEFAULT_MIN_IDLE) -> None:
        self.store = store
        self.min_idle = min_idle

    def max_size(self) -> int | None:
        value = self.store.setting(MAX_SIZE_SETTING)
        return int(value) if value else None

    def plan(self, now: datetime | None = None) -> EvictionPlan:
        now = now or datetime.now(timezone.utc)
        rules = {r.name: r for r in self.store.cache_rules()}
        expired: list[str] = []
        for name, rule, last_pull in self.store.repository_pulls():
            retention = rules[rule].retention if rule in rules else None
            if retention is not None and last_pull is not None and last_pull < now - timedelta(seconds=retention):
                expired.append(name)
        blobs = self.store.blob_usage()  # digest -> (size, path, last_access, repositories)
        cache_bytes = sum(size for size, _, _, _ in blobs.values())
        chosen: dict[str, EvictionCandidate] = {}
        expired_set = set(expired)
        for digest, (size, path, last_access, repositories) in blobs.items():
            if repositories and set(repositories) <= expired_set:
                chosen[digest] = EvictionCandidate(digest, size, path, last_access,
                                                   f"retention expired for {', '.join(sorted(repositories))}")
        max_size = self.max_size()
        if max_size is not None:
            remaining = cache_bytes - sum(c.size for c in chosen.values())
            idle_before = now - timedelta(seconds=self.min_idle)
            by_age = sorted((item for item in blobs.items() if item[0] not in chosen),
                            key=lambda item: item[1][2] or datetime.min.replace(tzinfo=timezone.utc))
            for digest, (size, path, last_access, _) in by_age:
                if remaining <= max_size:
                    break
                if last_access is not None and last_access > idle_before:
                    continue  # pulled moments ago: a client may be reading it
                chosen[digest] = EvictionCandidate(digest, size, path, last_access,
                                                   "least recently pulled, over max-size")
                remaining -= size
        return EvictionPlan(tuple(chosen.values()), tuple(sorted(expired)), cache_bytes, max_size)

    def apply(self, plan: EvictionPlan) -> int:
        """Evict what ``plan`` lists; returns the bytes freed.

        Blobs in a bucket (paths ``s3:KEY``) only lose their row here: :func:`evict` deletes their
        objects first, since that needs the async object store.
        """
        home = self.store.home
        freed = 0
        with self.store.transaction():
            for name in plan.expired_repositories:
                self.store.forget_repository(name)
        for candidate in plan.candidates:
            if candidate.path.startswith(BUCKET_PATH_PREFIX):
                # The object went first; a download that stored it again meanwhile keeps its row (else
                # its object would be in the bucket with nothing left to account for or evict it).
                self.store.delete_blob(candidate.digest, unless_accessed_since=candidate.last_access)
                freed += candidate.size
                continue
            path = home / candidate.path
            if not _inside(path, home / "blobs"):
                log.error("refusing to delete %s: not inside the blob store", path)
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self.store.delete_blob(candidate.digest)
            freed += candidate.size
        if freed:
            log.info("evicted %d blob(s), %d bytes", len(plan.candidates), freed)
        return freed


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def plan_if_configured(store: StateStore, min_idle: float = DEFAULT_MIN_IDLE) -> EvictionPlan | None:
    """The eviction plan when retention or max-size is configured, else None."""
    evictor = Evictor(store, min_idle)
    if evictor.max_size() is None and not any(r.retention for r in store.cache_rules()):
        return None
    return evictor.plan()


@dataclass(frozen=True, slots=True)
class CollectionReport:
    """What one garbage collection evicted (or would) and, with s3 storage, which stale uploads it aborted."""

    plan: EvictionPlan
    bytes_freed: int
    #: (key, upload id, initiated, why it is judged abandoned); None for filesystem storage
    stale_uploads: list[tuple[str, str, datetime, str]] | None
    storage: str  # the storage backend, described for people


def collect_garbage(store: StateStore, secrets: SecretResolver | None = None, min_idle: float = DEFAULT_MIN_IDLE,
                    stale_uploads_after: timedelta | None = None, dry_run: bool = False,
                    only_if_configured: bool = False) -> CollectionReport:
    """Evict by retention and max-size and, with s3 storage, abort abandoned multipart uploads.

    Runs from a thread, not an event loop (the bucket is reached through its own). Bucket objects are
    deleted before their rows, so a failure leaves rows to retry rather than objects nothing tracks.
    ``only_if_configured`` plans no eviction unless retention or max-size is set.
    """
    from regcache.proxy.core.settings import S3Storage, StorageError, storage_from_json

    evictor = Evictor(store, min_idle)
    plan = plan_if_configured(store, min_idle) if only_if_configured else evictor.plan()
    plan = plan or EvictionPlan((), (), 0, None)
    config = storage_from_json(store.setting("storage"))
    stale: list[tuple[str, str, datetime, str]] | None = None
    if isinstance(config, S3Storage):
        stale = _collect_bucket(config, secrets, plan, stale_uploads_after, dry_run)
    elif _bucket_keys(plan) and not dry_run:
        raise StorageError("blobs to evict are in a bucket, but the storage setting is no longer s3: set it "
                           "back with `regcache storage set s3` to evict them")
    freed = plan.bytes_freed if dry_run else evictor.apply(plan)
    return CollectionReport(plan, freed, stale, config.describe())


def _collect_bucket(config, secrets: SecretResolver | None, plan: EvictionPlan, stale_after: timedelta | None,
                    dry_run: bool) -> list[tuple[str, str, datetime, str]]:
    import anyio

    from regcache.proxy.storage.backend import BucketBackend
    from regcache.proxy.storage.objectstore import DEFAULT_STALE_UPLOAD_AGE, ObjectStore

    async def run() -> list[tuple[str, str, datetime, str]]:
        async with ObjectStore(config, secrets) as objects:
            stale = await objects.stale_uploads(stale_after or DEFAULT_STALE_UPLOAD_AGE)
            if not dry_run:
                await BucketBackend(objects).release([c.path for c in plan.candidates])
                for upload, _ in stale:
                    await objects.abort_upload(upload.key, upload.upload_id)
        return [(upload.key, upload.upload_id, upload.initiated, why) for upload, why in stale]

    return anyio.run(run)


def _bucket_keys(plan: EvictionPlan) -> list[str]:
    """The object keys of the planned blobs that live in the bucket."""
    return [c.path.removeprefix(BUCKET_PATH_PREFIX) for c in plan.candidates if c.path.startswith(BUCKET_PATH_PREFIX)]


async def evict(state: AsyncStateStore, plan: EvictionPlan, backend: BlobBackend) -> int:
    """Apply ``plan``: the backend releases what it holds first, then the rows go; returns bytes freed."""
    releasable = set(await backend.release([c.path for c in plan.candidates]))
    plan = replace(plan, candidates=tuple(c for c in plan.candidates if c.path in releasable))
    return await state.run(lambda s: Evictor(s).apply(plan))


async def run_eviction(state: AsyncStateStore, backend: BlobBackend, interval: float = 60.0) -> None:
    """Evict every ``interval`` seconds, for as long as the proxy serves (its owner cancels it)."""
    import anyio

    while True:
        await anyio.sleep(interval)
        try:
            plan = await state.run(plan_if_configured)
            if plan is not None:
                await evict(state, plan, backend)
        except Exception:  # eviction must not take the proxy down; the next round tries again
            log.exception("eviction failed")
