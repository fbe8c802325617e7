"""SharedIndex: what regcache nodes on one bucket tell each other besides blobs.

Each node keeps its own state database; through the bucket they share manifests (content-addressed,
checked against their digest on every read), tags (the digest a node last saw, and when) and links
(an upstream repository verifiably has a digest). So node B can answer a pull that node A fetched,
with the upstream down, without trusting anything it cannot check: manifest bytes are verified, and
a link is only ever written by a node that got the digest from that upstream repository.

The index is a cache of a cache: a bucket that cannot be read is treated as empty (the upstream is
asked instead) and a write that fails is logged, never failing the client's pull.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from regcache.proxy.core.references import is_digest
from regcache.proxy.core.settings import StorageError
from regcache.proxy.storage.objectstore import ObjectStore

log = logging.getLogger("regcache.shared")


@dataclass(frozen=True, slots=True)
class SharedTag:
    digest: str
    seen_at: datetime


def _matches(digest: str, content: bytes) -> bool:
    algorithm, _, expected = digest.partition(":")
    try:
        return hashlib.new(algorithm, content).hexdigest() == expected
    except ValueError:
        return False


class SharedIndex:
    """Manifests, tags and repository links in the shared bucket."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    async def manifest(self, digest: str) -> tuple[str, bytes] | None:
        """The manifest's media type and bytes, if a node stored it and they match ``digest``."""
        found = await self._read(self.objects.manifest_key(digest))
        if found is None:
            return None
        if not _matches(digest, found.content):
            log.warning("ignoring manifest %s in %s: its bytes do not match the digest", digest, self.objects.where)
            return None
        return found.content_type, found.content

    async def put_manifest(self, digest: str, media_type: str, content: bytes) -> None:
        await self._write(self.objects.manifest_key(digest), content, media_type)

    async def linked(self, source: str, digest: str) -> bool:
        """Whether a node verified that the upstream repository ``source`` has ``digest``."""
        try:
            return await self.objects.size(self.objects.link_key(source, digest)) is not None
        except StorageError as exc:
            log.warning("shared store unavailable, asking the upstream: %s", exc)
            return False

    async def link(self, source: str, digest: str) -> None:
        await self._write(self.objects.link_key(source, digest), b"", "application/octet-stream")

    async def tag(self, source: str, tag: str) -> SharedTag | None:
        found = await self._read(self.objects.tag_key(source, tag))
        if found is None:
            return None
        digest = found.content.decode("ascii", "replace").strip()
        if not is_digest(digest) or not digest.startswith("sha256:"):  # what nodes write; anything else is not ours
            return None
        return SharedTag(digest, found.last_modified)

    async def set_tag(self, source: str, tag: str, digest: str) -> None:
        await self._write(self.objects.tag_key(source, tag), digest.encode(), "text/plain")

    async def forget(self, tags: Iterable[tuple[str, str]], links: Iterable[tuple[str, str]]) -> int:
        """Drop (source, tag) tags and (source, digest) links from the bucket (a purge: no node may bring them
        back from here); manifests stay, content-addressed and unused without a link. The number dropped;
        a bucket that cannot be written raises (a purge that silently left them would not be one)."""
        keys = [self.objects.tag_key(source, tag) for source, tag in tags]
        keys += [self.objects.link_key(source, digest) for source, digest in links]
        for key in keys:
            await self.objects.delete(key)
        return len(keys)

    async def _read(self, key: str):
        try:
            return await self.objects.read(key)
        except StorageError as exc:
            log.warning("shared store unavailable, asking the upstream: %s", exc)
            return None

    async def _write(self, key: str, content: bytes, content_type: str) -> None:
        try:
            await self.objects.write(key, content, content_type)
        except StorageError as exc:
            log.warning("could not share %s with the other nodes: %s", key, exc)
