"""One upstream download of a blob in progress, its readers, and verified blobs as stored.

A download writes a temporary file, hashing on the fly; every waiting client streams from that file
as it grows (a :class:`BlobStream` each), and the last byte is held back until the digest verified.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
import anyio.lowlevel

log = logging.getLogger("regcache.blobs")

#: the piece a streaming client's body is read and sent in (a warm file, a download in flight, a bucket object).
#: It bounds the memory a client costs, however slowly it reads: the piece being read, and at most one more
#: waiting in the connection's write buffer (the server awaits the buffer's drain before each send), so about
#: 2 MiB, 3 MiB for a moment while a piece is handed to the socket. 4 MiB pieces cost ~15 MB per slow client
#: (allocator and write buffer included) and moved one warm blob ~25% faster here (fewer sends); 256 KiB pieces
#: paid in thread hops. The kernel's sendfile (server.OFFER_ZERO_COPY) needs no piece at all.
STREAM_CHUNK = 1024 * 1024


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


class FetchedBlob(Protocol):
    """What a download reads: the size the source announced (None: unknown) and the bytes as they arrive.

    The source bounds them (regcache.proxy.upstream.client.UpstreamBlob: size limit, minimum rate).
    """

    size: int | None

    def chunks(self) -> AsyncIterator[bytes]: ...

    def receive(self, consume: Callable[[memoryview], None]) -> AsyncGenerator[int, None] | None:
        """The bytes handed to ``consume`` on another thread as they arrive, the count so far yielded; None
        when the source cannot (then :meth:`chunks`)."""
        ...


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A verified blob: a file under the state directory, or (``key``) an object in the shared bucket."""

    digest: str
    path: Path | None
    size: int
    key: str | None = None


class Download:
    """One upstream download in progress; readers follow ``written`` and wait on ``changed()``."""

    def __init__(self, digest: str, tmp_path: Path, fd: int, flight: str = "") -> None:
        self.digest = digest
        #: whose download this is (a source): only its own requests join it
        self.flight = flight
        self.tmp_path = tmp_path
        self.fd = fd
        self.size: int | None = None
        self.headers_received = False
        self.written = 0
        #: the digest matched: readers may take the last byte
        self.verified = False
        #: stored (or, in a bucket, failed to store) and no longer joinable
        self.done = False
        #: its task ended: kept and recorded, or failed
        self.ended = False
        self.error: BaseException | None = None
        #: what the request that started the download runs once its bytes verified, before they are kept
        self.on_verified: Callable[[], Awaitable[None]] | None = None
        #: asked once the source answered: whether this node stores the bytes (not when a fleet member streams
        #: them from its own download, which it stores itself)
        self.keep_if: Callable[[], bool] = lambda: True
        self.keep = True
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def changed(self) -> None:
        await self._event.wait()


@dataclass(slots=True)
class FilePiece:
    """``count`` bytes at ``offset`` of the open file ``fd`` that a download wrote (the last byte only once the
    blob verified): a server can hand them to the kernel (``sendfile``) instead of reading them through Python.
    Whoever sends them sets ``sent`` (bytes that reached the client) before asking the stream for more; the
    stream keeps ``fd`` open until then.
    """

    fd: int
    offset: int
    count: int
    sent: int = 0


class BlobStream:
    """A reader of an in-progress download, with its own file descriptor on the temporary file."""

    def __init__(self, download: Download, fd: int, joined: bool = False) -> None:
        self.download = download
        self._fd = fd
        #: another request started this download (its bytes are fetched once, for that one)
        self.joined = joined

    async def _wait(self, ready: Callable[[Download], bool]) -> None:
        """Wait until ``ready``; raise the download's error instead if it failed first."""
        d = self.download
        while not ready(d) and d.error is None:
            await d.changed()
        if d.error is not None and not d.verified:  # once verified, only keeping the bytes failed
            self.close()
            raise d.error

    async def size(self) -> int | None:
        """The blob's size once the upstream answered (None if it sent no Content-Length)."""
        await self._wait(lambda d: d.headers_received)
        return self.download.size

    async def wait_verified(self) -> None:
        """Return once the whole blob verified; raise the download's error instead if it failed."""
        await self._wait(lambda d: d.verified)

    async def wait_kept(self) -> None:
        """Return once the download is kept and recorded (or left to the fleet member that streamed it, or in a
        bucket whatever its upload did); raise what failed instead: readers have their bytes once verified, before."""
        d = self.download
        while not d.ended:
            await d.changed()
        if not d.done:
            assert d.error is not None
            raise d.error

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) as they arrive; raises if the download fails.

        The last byte is held back until the blob is verified, so a client never receives a
        complete body of a blob that failed its digest check.
        """
        async for piece in self.body(start, end, file_pieces=False):
            assert isinstance(piece, bytes)
            yield piece

    async def body(self, start: int = 0, end: int | None = None,
                   file_pieces: bool = True) -> AsyncIterator[bytes | FilePiece]:
        """As :meth:`chunks`, but what is written comes as :class:`FilePiece` ranges of the temporary file
        (``file_pieces``): a server sends them without copying them, so a client that joined a download costs
        what a warm hit costs, not two copies of every byte (a read and a send), whatever the number of clients.
        """
        d = self.download
        offset = start
        try:
            while True:
                if d.error is not None and not d.verified:  # once verified, keeping the bytes failed, not them
                    if isinstance(d.error, BlobStorageError):  # already says what failed and what to do
                        raise BlobStorageError(str(d.error), d.error.disk_full)
                    raise BlobDownloadError(f"download of {d.digest} failed: {d.error}")
                available = d.written if d.verified or d.size is None else min(d.written, d.size - 1)
                limit = available if end is None else min(available, end)
                if file_pieces and offset < limit:
                    piece = FilePiece(self._fd, offset, limit - offset)
                    yield piece  # the file stays open while the server sends from it
                    if piece.sent < piece.count:  # the client went away
                        return
                    offset = limit
                    continue
                if offset < limit:
                    data = os.pread(self._fd, min(limit - offset, STREAM_CHUNK), offset)
                    if not data:
                        raise BlobDownloadError(f"download of {d.digest} lost its temporary file")
                    offset += len(data)
                    yield data
                    await anyio.lowlevel.checkpoint()  # a reader behind a fast download lets the others run
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


async def verified(chunks: AsyncIterator[bytes], digest: str) -> AsyncIterator[bytes]:
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


async def read_at(fd: int, size: int, offset: int) -> bytes:
    data = await anyio.to_thread.run_sync(os.pread, fd, size, offset)
    if len(data) != size:
        raise BlobDownloadError(f"the temporary file is shorter than expected ({len(data)} of {size} bytes)")
    return data


async def file_chunks(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
    try:
        offset = start
        while offset < end:
            data = await anyio.to_thread.run_sync(os.pread, fd, min(STREAM_CHUNK, end - offset), offset)
            if not data:
                raise OSError(f"{path} is shorter than expected")
            offset += len(data)
            yield data
    finally:
        os.close(fd)

def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
