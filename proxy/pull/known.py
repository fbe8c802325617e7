"""What the cache learned from the state for one configuration version, kept so a warm request reads nothing.

A manifest by digest or a blob that is a hit needs "this source is linked to this digest" (and the manifest's
bytes): facts read from SQLite on a worker thread, the same answer every time. Only such positive facts are
kept, and only for the configuration version (``config_version``, m013) read *before* they were: whatever can
make one false (a link removed by a purge or retention, a rule, credential set or token changed, by any
process) moves that version, and a request that reads a newer one finds nothing kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KnownForVersion(Generic[K, V]):
    """At most ``max_entries`` facts (and ``max_bytes`` of their sizes), least recently used dropped first, all
    belonging to one configuration version."""

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.version: int | None = None
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: K, version: int) -> V | None:
        """The fact kept for ``key`` if it belongs to ``version``."""
        if version != self.version:
            return None
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, version: int, size: int = 0) -> None:
        """Keep ``value``, read from the state after ``version`` was read. A newer version than the one kept
        replaces all of them; an older one (a slow request's) is not kept."""
        if self.max_bytes is not None and size > self.max_bytes // 16:
            return  # one big answer would push out many small ones
        if self.version is not None and version < self.version:
            return
        if version != self.version:
            self.clear()
            self.version = version
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._items[key] = (value, size)
        self._bytes += size
        while len(self._items) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes):
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)
