"""Where verified blobs live: the state directory, or the bucket that s3 nodes share, behind one protocol.

:class:`BlobStore` runs downloads (single flight, verification) the same way for both; a backend only
finds, reads, keeps and releases verified bytes. Which one serves is the ``storage`` setting's choice
(:func:`open_backend`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import anyio

from regcache.proxy.core.errors import unwrap_error
from regcache.proxy.core.settings import STORAGE_SETTING, S3Storage, StorageError, storage_from_json
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import StateStore
from regcache.proxy.storage.download import (
    Download,
    StoredBlob,
    file_chunks,
    fsync_dir,
    read_at,
    storage_error,
    unlink,
    verified,
)
from regcache.proxy.storage.objectstore import SHIELDED_TIMEOUT, MultipartUpload, ObjectStore, part_size_for
from regcache.proxy.storage.shared_index import SharedIndex

log = logging.getLogger("regcache.blobs")

#: a blob row whose path starts with this names an object key in the shared bucket (s3 storage)
BUCKET_PATH_PREFIX = "s3:"
#: seconds a blob object seen in the bucket (or uploaded by this node) is served without asking the bucket again
BUCKET_PRESENCE_TTL = 30.0
#: blob objects remembered at most (about 200 bytes each)
BUCKET_PRESENCE_MAX = 50_000


class BlobBackend(Protocol):
    """Verified bytes by digest; what the downloads of :class:`BlobStore` are kept in."""

    #: manifests, tags and links shared with other nodes (None: this backend shares nothing)
    shared: SharedIndex | None

    async def lookup(self, digest: str) -> StoredBlob | None:
        """The verified blob, if this backend holds it."""

    def open(self, blob: StoredBlob, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of a verified blob."""

    async def keep(self, d: Download, fetch: Callable[[], Awaitable[None]],
                   publish: Callable[[], None]) -> str | None:
        """Run ``fetch`` (it fills and verifies ``d``'s temporary file), keep the verified bytes, and call
        ``publish`` at the moment a new request would find them here instead of joining ``d``. Returns
        the path to record in the blobs table, or None when the bytes could not be kept."""

    async def release(self, paths: list[str]) -> list[str]:
        """Delete the stored bytes of these blobs-table paths that live in this backend; returns the paths
        whose rows may go (those of another backend are kept until it is configured again)."""


class FilesystemBackend:
    """Blobs as files under ``HOME/blobs/<algorithm>/<2 hex>/<hex>``, fsynced and renamed into place."""

    shared: SharedIndex | None = None

    def __init__(self, home: Path) -> None:
        self.home = home
        self.root = home / "blobs"

    def path_for(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.root / algorithm / encoded[:2] / encoded

    def stored(self, digest: str) -> StoredBlob | None:
        """The verified blob, if it is on disk (the file, not the database, is the truth)."""
        path = self.path_for(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return StoredBlob(digest, path, size)

    async def lookup(self, digest: str) -> StoredBlob | None:
        return self.stored(digest)

    def open(self, blob: StoredBlob, start: int, end: int) -> AsyncIterator[bytes]:
        assert blob.path is not None, "a bucket blob handed to the filesystem backend"
        return file_chunks(blob.path, start, end)

    async def keep(self, d: Download, fetch: Callable[[], Awaitable[None]],
                   publish: Callable[[], None]) -> str | None:
        final = self.path_for(d.digest)
        await fetch()
        if not d.keep:  # served, verified, and stored by the fleet member that streamed it
            publish()
            unlink(d.tmp_path)
            return None
        # Clients may have had every byte: a stop waits for the flush and rename rather than lose them.
        with anyio.CancelScope(shield=True):
            try:  # fsync reports deferred write errors; mkdir needs an inode, which a full disk may lack
                await anyio.to_thread.run_sync(os.fsync, d.fd)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(d.tmp_path, final)
            except OSError as exc:
                raise storage_error(exc, d.digest) from exc
            # Between the rename and this no await happens: a new request either joins the download or
            # finds the final file.
            publish()
            await anyio.to_thread.run_sync(fsync_dir, final.parent)
        return str(final.relative_to(self.home))

    async def release(self, paths: list[str]) -> list[str]:
        # Files are removed with their rows (Evictor.apply); bucket rows wait for the bucket.
        return [p for p in paths if not p.startswith(BUCKET_PATH_PREFIX)]


class BucketBackend:
    """Blobs as objects in the shared bucket; an upload follows each download as its temporary file grows."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self.shared: SharedIndex | None = SharedIndex(objects)
        #: object key -> (size, when seen): a warm hit within BUCKET_PRESENCE_TTL costs one GET, not a HEAD and a GET
        self._present: dict[str, tuple[int, float]] = {}

    async def lookup(self, digest: str) -> StoredBlob | None:
        """The blob's object, from memory when it was seen lately. Another node's eviction may delete it
        meanwhile: the GET then fails before any byte (the client retries; see :meth:`open`), never wrong bytes."""
        key = self.objects.blob_key(digest)
        seen = self._present.get(key)
        if seen is not None and time.monotonic() - seen[1] < BUCKET_PRESENCE_TTL:
            return StoredBlob(digest, None, seen[0], key)
        try:
            size = await self.objects.size(key)
        except StorageError as exc:  # the bucket is down: fetch from the upstream (storing may fail too)
            log.warning("%s; treating %s as not cached", exc, digest)
            return None
        if size is None:
            self._present.pop(key, None)
            return None
        self._remember(key, size)
        return StoredBlob(digest, None, size, key)

    def _remember(self, key: str, size: int) -> None:
        self._present.pop(key, None)  # re-inserted last: the oldest entries are the first to go
        if len(self._present) >= BUCKET_PRESENCE_MAX:
            del self._present[next(iter(self._present))]
        self._present[key] = (size, time.monotonic())

    def open(self, blob: StoredBlob, start: int, end: int) -> AsyncIterator[bytes]:
        """A whole blob is hashed on the way and its last chunk held back until it matches: the bucket is
        shared, and a node's bug (or anyone holding its keys) must not make this node serve wrong bytes."""
        assert blob.key is not None, "a file blob handed to the bucket backend"
        chunks = self._forgotten_on_failure(blob.key, self.objects.chunks(blob.key, start, end))
        return verified(chunks, blob.digest) if (start, end) == (0, blob.size) else chunks

    async def _forgotten_on_failure(self, key: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``; when the bucket fails to give them (the object is gone), the next lookup asks it again."""
        try:
            async for chunk in chunks:
                yield chunk
        except StorageError:
            self._present.pop(key, None)
            raise

    async def keep(self, d: Download, fetch: Callable[[], Awaitable[None]],
                   publish: Callable[[], None]) -> str | None:
        key = self.objects.blob_key(d.digest)
        upload = BucketUpload(self.objects, key, d)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(upload.run, name=f"upload {d.digest}")
                await fetch()  # readers have the last byte once it verified; the upload finishes meanwhile
        except BaseExceptionGroup as group:  # readers and the log need the download's own error
            inner = unwrap_error(group, (Exception,))
            if isinstance(inner, Exception) and not isinstance(inner, BaseExceptionGroup):
                raise inner from None
            raise
        # Until here a new request joins this download (the temporary file is complete); from here on
        # it finds the object in the bucket, or (if the upload failed) starts a new download.
        if upload.completed:
            self._remember(key, d.written)
        publish()
        unlink(d.tmp_path)
        return BUCKET_PATH_PREFIX + key if upload.completed else None

    async def release(self, paths: list[str]) -> list[str]:
        # Objects go before their rows: a failure leaves rows to retry, not objects nothing tracks.
        for path in paths:
            if path.startswith(BUCKET_PATH_PREFIX):
                key = path.removeprefix(BUCKET_PATH_PREFIX)
                self._present.pop(key, None)  # forgotten first: a lookup meanwhile asks
                await self.objects.delete(key)
        return paths


@asynccontextmanager
async def open_backend(home: Path, store: StateStore, secrets: SecretResolver | None = None,
                       on_error: Callable[[str], None] | None = None) -> AsyncIterator[BlobBackend]:
    """The backend the storage setting names; a bucket is checked usable first."""
    config = await anyio.to_thread.run_sync(lambda: storage_from_json(store.setting(STORAGE_SETTING)))
    if not isinstance(config, S3Storage):
        yield FilesystemBackend(home)
        return
    async with ObjectStore(config, secrets, on_error) as objects:
        await objects.check()
        yield BucketBackend(objects)


class BucketUpload:
    """Follows a download's temporary file into the bucket: full parts as they arrive, the rest once verified.

    A failure of the bucket does not fail the download (its clients still get their bytes); the blob
    is then just not stored. Cancellation (a failed download) aborts the upload, so nothing appears.
    """

    def __init__(self, objects: ObjectStore, key: str, download: Download) -> None:
        self.objects = objects
        self.key = key
        self.download = download
        self.completed = False

    async def run(self) -> None:
        d = self.download
        fd = os.open(d.tmp_path, os.O_RDONLY)
        upload: MultipartUpload | None = None
        try:
            while not d.headers_received:
                await d.changed()
            if not d.keep:  # the fleet member that streams it stores it
                return
            part = part_size_for(d.size)
            offset = 0
            while not d.verified:
                if d.written - offset >= part:
                    upload = upload or await self.objects.start_upload(self.key)
                    await upload.upload_part(await read_at(fd, part, offset))
                    offset += part
                else:
                    await d.changed()
            if upload is None:  # smaller than one part: one plain PUT of the verified bytes
                await self.objects.write(self.key, await read_at(fd, d.written, 0))
            else:
                while offset < d.written:
                    size = min(part, d.written - offset)
                    await upload.upload_part(await read_at(fd, size, offset))
                    offset += size
                await upload.complete()
            self.completed = True
        except Exception as exc:
            log.warning("could not store %s in %s: %s; clients were served, the next pull downloads it again",
                        d.digest, self.objects.where, exc)
        finally:
            os.close(fd)
            if upload is not None and not self.completed:
                with anyio.move_on_after(SHIELDED_TIMEOUT, shield=True):
                    try:
                        await upload.abort()
                    except Exception as exc:  # `regcache gc` aborts it later
                        log.warning("could not abort the upload of %s: %s", d.digest, exc)
