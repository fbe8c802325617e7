"""The content-addressed blob store and its single-flight streaming downloads.

A blob lives once per digest under ``blobs/<algorithm>/<2 hex>/<hex>``. On a miss exactly one
upstream download runs per digest, however many clients ask: it writes a temporary file, hashing on
the fly, and every waiting client streams from that file as it grows. Only a verified file is
fsynced and renamed into place; a digest or size mismatch, a cut upstream, or a failure of the
cache's own disk (full, over quota, I/O error) aborts every reader and deletes the temporary file.
The download belongs to the store's task group, not to the first client, so it completes (and the
next pull is a hit) even when that client goes away.

With the ``s3`` storage backend the bucket, not the state directory, holds verified blobs: the
temporary file still feeds the waiting clients, and an upload follows it part by part as it grows
(multipart), completed only once the digest verified and aborted otherwise, so no other node ever
sees a partial object.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
from anyio.abc import TaskGroup

from regcache.proxy.core.errors import unwrap_error
from regcache.proxy.core.settings import StorageError
from regcache.proxy.state.store import AsyncStateStore
from regcache.proxy.storage.objectstore import SHIELDED_TIMEOUT, MultipartUpload, ObjectStore, part_size_for

log = logging.getLogger("regcache.blobs")

#: a blob row whose path starts with this names an object key in the shared bucket (s3 storage)
BUCKET_PATH_PREFIX = "s3:"

CHUNK = 1024 * 1024
#: reads of stored files: bigger reads mean fewer worker-thread hops
FILE_CHUNK = 4 * 1024 * 1024
#: readers are woken when this much new data arrived (and at the end): waking them for every
#: network read costs more than the copying
NOTIFY_EVERY = 1024 * 1024

BlobFetch = Callable[[], AbstractAsyncContextManager[httpx.Response]]


class BlobDownloadError(Exception):
    """The shared download of a blob failed; every reader of it gets this (or the upstream error)."""


class BlobIntegrityError(BlobDownloadError):
    """The upstream's bytes did not match the digest or the announced size."""


class BlobStorageError(BlobDownloadError):
    """The cache's own disk failed while storing a blob (full, over quota, I/O error); nothing was stored.

    Kept apart from upstream failures so that clients and the event log are told that the cache's disk,
    not the upstream, is the problem, and what to do about it.
    """

    def __init__(self, message: str, disk_full: bool) -> None:
        super().__init__(message)
        #: out of space or quota (retrying after space is freed helps), rather than a failing disk
        self.disk_full = disk_full


#: errno values meaning "no room left" on the blobs directory's file system
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def storage_error(exc: OSError, digest: str) -> BlobStorageError:
    """The clear error for an OSError of the cache's disk while storing ``digest``.

    The message goes to clients, so it names no local path (the log line does).
    """
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_ROOM:
        return BlobStorageError(f"the cache's disk is full ({reason}) while storing {digest}; nothing was "
                                f"stored: free space on it or lower max-size", disk_full=True)
    return BlobStorageError(f"the cache's disk failed ({reason}) while storing {digest}; nothing was stored",
                            disk_full=False)


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A verified blob: a file under the state directory, or (``key``) an object in the shared bucket."""

    digest: str
    path: Path | None
    size: int
    key: str | None = None


class Download:
    """One upstream download in progress; readers follow ``written`` and wait on ``changed()``."""

    def __init__(self, digest: str, tmp_path: Path, fd: int) -> None:
        self.digest = digest
        self.tmp_path = tmp_path
        self.fd = fd
        self.size: int | None = None
        self.headers_received = False
        self.written = 0
        #: the digest matched: readers may take the last byte
        self.verified = False
        #: stored (or, in a bucket, failed to store) and no longer joinable
        self.done = False
        self.error: BaseException | None = None
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def changed(self) -> None:
        await self._event.wait()


class BlobStream:
    """A reader of an in-progress download, with its own file descriptor on the temporary file."""

    def __init__(self, download: Download, fd: int, joined: bool = False) -> None:
        self.download = download
        self._fd = fd
        #: another request started this download (its bytes are fetched once, for that one)
        self.joined = joined

    async def size(self) -> int | None:
        """The blob's size once the upstream answered (None if it sent no Content-Length)."""
        d = self.download
        while not d.headers_received and d.error is None:
            await d.changed()
        if d.error is not None:
            self.close()
            raise d.error
        return d.size

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) as they arrive; raises if the download fails.

        The last byte is held back until the blob is verified, so a client never receives a
        complete body of a blob that failed its digest check.
        """
        d = self.download
        offset = start
        try:
            while True:
                if isinstance(d.error, BlobStorageError):  # already says what failed and what to do
                    raise BlobStorageError(str(d.error), d.error.disk_full)
                if d.error is not None:
                    raise BlobDownloadError(f"download of {d.digest} failed: {d.error}")
                available = d.written if d.verified or d.size is None else min(d.written, d.size - 1)
                limit = available if end is None else min(available, end)
                if offset < limit:
                    data = os.pread(self._fd, min(limit - offset, CHUNK), offset)
                    if not data:
                        raise BlobDownloadError(f"download of {d.digest} lost its temporary file")
                    offset += len(data)
                    yield data
                    continue
                if end is not None and offset >= end:
                    return
                if d.verified and offset >= d.written:
                    return
                await d.changed()
        finally:
            self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BlobStore:
    """Verified blobs plus the downloads in flight; needs a task group to own downloads.

    With ``objects`` (the s3 backend) verified blobs live in that bucket; the state directory only
    holds the temporary files of downloads in flight.
    """

    def __init__(self, home: Path, state: AsyncStateStore, task_group: TaskGroup,
                 objects: ObjectStore | None = None) -> None:
        self.root = home / "blobs"
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._home = home
        self._state = state
        self._tg = task_group
        self.objects = objects
        self._inflight: dict[str, Download] = {}
        #: completed upstream downloads per digest (tests and the benchmark read it)
        self.downloads = 0
        #: downloads of this node that finished storing in the bucket (see lookup)
        self._stored_in_bucket = 0

    def path_for(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.root / algorithm / encoded[:2] / encoded

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files left by a process that is gone (or by an earlier run of ours).

        Temporary names start with the writer's pid, so a TUI and a `regcache serve` sharing a
        state directory never delete each other's downloads.
        """
        removed = 0
        for path in self.tmp.iterdir():
            pid_text = path.name.split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and _alive(int(pid_text)):
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def stored(self, digest: str) -> StoredBlob | None:
        """The verified blob, if it is on disk (the file, not the database, is the truth); filesystem only."""
        path = self.path_for(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return StoredBlob(digest, path, size)

    async def lookup(self, digest: str) -> StoredBlob | None:
        """The verified blob on disk or in the bucket; None while a download of it runs here (join it)."""
        if self.objects is None:
            return self.stored(digest)
        key = self.objects.blob_key(digest)
        for _ in range(2):
            if digest in self._inflight:
                return None
            stored_before = self._stored_in_bucket
            try:
                size = await self.objects.size(key)
            except StorageError as exc:  # the bucket is down: fetch from the upstream (storing may fail too)
                log.warning("%s; treating %s as not cached", exc, digest)
                return None
            if size is not None:
                return StoredBlob(digest, None, size, key)
            if self._stored_in_bucket == stored_before:
                return None
            # A download of ours finished while we asked, perhaps this very blob: ask once more, so it
            # is not downloaded a second time
        return None

    def open(self, blob: StoredBlob, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of a verified blob.

        A whole blob read from the bucket is hashed on the way and its last chunk held back until it
        matches: the bucket is shared, and a node's bug (or anyone holding its keys) must not make
        this node serve wrong bytes as the digest's.
        """
        if blob.key is not None:
            assert self.objects is not None
            chunks = self.objects.chunks(blob.key, start, end)
            return _verified(chunks, blob.digest) if (start, end) == (0, blob.size) else chunks
        assert blob.path is not None
        return _file_chunks(blob.path, start, end)

    def stream(self, digest: str, fetch: BlobFetch) -> BlobStream:
        """Join the download of ``digest``, starting it if none runs. Call only after ``lookup()`` said no.

        No await happens between finding (or creating) the download and opening the reader's file
        descriptor, so the temporary file cannot be renamed away in between. Raises BlobStorageError
        when the temporary file cannot be created (a full disk can refuse even an empty file).
        """
        download = self._inflight.get(digest)
        joined = download is not None
        if download is None:
            tmp_path = self.tmp / f"{os.getpid()}-{secrets.token_hex(8)}-{digest.replace(':', '-')}"
            try:
                fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                log.warning("cannot create a temporary file in %s: %s", self.tmp, exc)
                raise storage_error(exc, digest) from None
            download = Download(digest, tmp_path, fd)
            self._inflight[digest] = download
            self._tg.start_soon(self._download, download, fetch, name=f"download {digest}")
        return BlobStream(download, os.open(download.tmp_path, os.O_RDONLY), joined)

    async def _fetch(self, d: Download, fetch: BlobFetch) -> None:
        """Write the upstream's bytes to the temporary file, hashing them; raise unless they verify."""
        algorithm, _, expected = d.digest.partition(":")
        hasher = hashlib.new(algorithm)
        async with fetch() as response:
            length = response.headers.get("content-length")
            d.size = int(length) if length and length.isdigit() else None
            d.headers_received = True
            d.notify()
            notified = 0
            # aiter_raw() without a size hands over what each network read returned, uncopied
            async for chunk in response.aiter_raw():
                hasher.update(chunk)
                try:
                    _write_all(d.fd, chunk)
                except OSError as exc:  # ENOSPC, EDQUOT, EIO: our disk failed, not the upstream
                    raise storage_error(exc, d.digest) from exc
                d.written += len(chunk)
                if d.size is not None and d.written > d.size:
                    raise BlobIntegrityError(f"upstream sent more than the announced {d.size} bytes")
                if d.written - notified >= NOTIFY_EVERY:
                    notified = d.written
                    d.notify()
            d.notify()
        if d.size is not None and d.written != d.size:
            raise BlobIntegrityError(f"upstream sent {d.written} of {d.size} bytes")
        if hasher.hexdigest() != expected:
            raise BlobIntegrityError(f"upstream content does not match {d.digest}; nothing was stored")

    async def _download(self, d: Download, fetch: BlobFetch) -> None:
        try:
            if self.objects is None:
                await self._download_to_disk(d, fetch)
            else:
                await self._download_to_bucket(d, fetch, self.objects)
        except BaseException as exc:
            if not d.done:
                d.error = exc if isinstance(exc, Exception) else BlobDownloadError("regcache is shutting down")
                self._inflight.pop(d.digest, None)
                _unlink(d.tmp_path)
                level = logging.WARNING if isinstance(exc, Exception) else logging.INFO
                where = f" (blobs in {self.root})" if isinstance(exc, BlobStorageError) else ""
                log.log(level, "download of %s failed: %s%s", d.digest, d.error, where)
            elif isinstance(exc, Exception):  # stored and served; only the directory fsync or its row failed
                log.warning("stored %s, but could not finish recording it: %s", d.digest, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            os.close(d.fd)
            d.notify()

    async def _download_to_disk(self, d: Download, fetch: BlobFetch) -> None:
        final = self.path_for(d.digest)
        await self._fetch(d, fetch)
        try:  # fsync reports deferred write errors; mkdir needs an inode, which a full disk may lack
            await anyio.to_thread.run_sync(os.fsync, d.fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(d.tmp_path, final)
        except OSError as exc:
            raise storage_error(exc, d.digest) from exc
        # Between the rename and this removal there is no await: a new request either joins
        # this download or finds the final file.
        del self._inflight[d.digest]
        d.size = d.written
        d.verified = d.done = True
        self.downloads += 1
        await anyio.to_thread.run_sync(_fsync_dir, final.parent)
        await self._state.run(lambda s: s.put_blob(d.digest, d.written, str(final.relative_to(self._home))))

    async def _download_to_bucket(self, d: Download, fetch: BlobFetch, objects: ObjectStore) -> None:
        key = objects.blob_key(d.digest)
        upload = BucketUpload(objects, key, d)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(upload.run, name=f"upload {d.digest}")
                await self._fetch(d, fetch)
                d.size = d.written
                d.verified = True  # readers take the last byte now; the upload finishes the object meanwhile
                d.notify()
        except BaseExceptionGroup as group:  # readers and the log need the download's own error
            inner = unwrap_error(group, (Exception,))
            if isinstance(inner, Exception) and not isinstance(inner, BaseExceptionGroup):
                raise inner from None
            raise
        # Until here a new request joins this download (the temporary file is complete); from here on
        # it finds the object in the bucket, or (if the upload failed) starts a new download.
        del self._inflight[d.digest]
        self._stored_in_bucket += 1
        d.done = True
        _unlink(d.tmp_path)
        self.downloads += 1
        if upload.completed:
            await self._state.run(lambda s: s.put_blob(d.digest, d.written, BUCKET_PATH_PREFIX + key))


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
            part = part_size_for(d.size)
            offset = 0
            while not d.verified:
                if d.written - offset >= part:
                    upload = upload or await self.objects.start_upload(self.key)
                    await upload.upload_part(await _read_at(fd, part, offset))
                    offset += part
                else:
                    await d.changed()
            if upload is None:  # smaller than one part: one plain PUT of the verified bytes
                await self.objects.write(self.key, await _read_at(fd, d.written, 0))
            else:
                while offset < d.written:
                    size = min(part, d.written - offset)
                    await upload.upload_part(await _read_at(fd, size, offset))
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


async def _verified(chunks: AsyncIterator[bytes], digest: str) -> AsyncIterator[bytes]:
    """``chunks`` with the last one held back until all of them hash to ``digest``."""
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm)
    held: bytes | None = None
    async for chunk in chunks:
        hasher.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if hasher.hexdigest() != expected:
        log.error("blob %s in the bucket does not match its digest: not served; delete the object so that "
                  "the next pull fetches it again", digest)
        raise BlobIntegrityError(f"the stored copy of {digest} is corrupt; nothing more was sent")
    if held is not None:
        yield held


async def _read_at(fd: int, size: int, offset: int) -> bytes:
    data = await anyio.to_thread.run_sync(os.pread, fd, size, offset)
    if len(data) != size:
        raise BlobDownloadError(f"the temporary file is shorter than expected ({len(data)} of {size} bytes)")
    return data


async def _file_chunks(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
    try:
        offset = start
        while offset < end:
            data = await anyio.to_thread.run_sync(os.pread, fd, min(FILE_CHUNK, end - offset), offset)
            if not data:
                raise OSError(f"{path} is shorter than expected")
            offset += len(data)
            yield data
    finally:
        os.close(fd)

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
