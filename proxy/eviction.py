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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .store import StateStore

log = logging.getLogger("regcache.eviction")

MAX_SIZE_SETTING = "max-size"
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
        """Evict what ``plan`` lists; returns the bytes freed."""
        home = self.store.home
        freed = 0
        with self.store.transaction():
            for name in plan.expired_repositories:
                self.store.forget_repository(name)
        for candidate in plan.candidates:
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


def evict_once(store: StateStore, min_idle: float = DEFAULT_MIN_IDLE) -> int:
    """Apply retention and max-size if either is configured; returns the bytes freed."""
    evictor = Evictor(store, min_idle)
    if evictor.max_size() is None and not any(r.retention for r in store.cache_rules()):
        return 0
    return evictor.apply(evictor.plan())


async def run_eviction(state, interval: float = 60.0) -> None:
    """Evict every ``interval`` seconds, for as long as the proxy serves (its owner cancels it)."""
    import anyio

    while True:
        await anyio.sleep(interval)
        try:
            await state.run(evict_once)
        except Exception:  # eviction must not take the proxy down; the next round tries again
            log.exception("eviction failed")
