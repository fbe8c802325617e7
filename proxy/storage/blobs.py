"""The blob store: single-flight streaming downloads into a :class:`BlobBackend`.

On a miss exactly one upstream download runs per digest, however many clients ask: it writes a
temporary file, hashing on the fly, and every waiting client streams from that file as it grows.
Only verified bytes are kept (a file fsynced and renamed into place, or an object in the shared
bucket whose multipart upload followed the file and completed once the digest verified); a digest or
size mismatch, a cut upstream, or a failure of the cache's own disk aborts every reader and deletes
the temporary file. The download belongs to the store's task group, not to the first client, so it
completes (and the next pull is a hit) even when that client goes away.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from regcache.proxy.state.store import AsyncStateStore
from regcache.proxy.storage.backend import BlobBackend, FilesystemBackend
from regcache.proxy.storage.download import (
    BlobDownloadError,
    BlobIntegrityError,
    BlobStorageError,
    BlobStream,
    Download,
    FetchedBlob,
    StoredBlob,
    alive,
    storage_error,
    unlink,
    write_all,
)

log = logging.getLogger("regcache.blobs")

#: readers are woken when this much new data arrived, or NOTIFY_INTERVAL passed, and at the end: a reader
#: sends what is written by sendfile, so a wake-up costs more than the bytes (16 clients of one cold 350 MB pull:
#: 2.5 s of CPU at 4 MiB, 3.1 s at 1 MiB), and a slow upstream still reaches its clients within 50 ms
NOTIFY_EVERY = 4 * 1024 * 1024
NOTIFY_INTERVAL = 0.05

BlobFetch = Callable[[], AbstractAsyncContextManager[FetchedBlob]]


class BlobStore:
    """Verified blobs plus the downloads in flight; needs a task group to own downloads.

    The state directory holds the temporary files of downloads in flight; ``backend`` (the state
    directory itself by default, or the bucket) keeps the verified bytes.
    """

    def __init__(self, home: Path, state: AsyncStateStore, task_group: TaskGroup,
                 backend: BlobBackend | None = None) -> None:
        self.tmp = home / "blobs" / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._state = state
        self._tg = task_group
        self.backend: BlobBackend = backend or FilesystemBackend(home)
        #: downloads in flight by (digest, flight): a flight is a source, and only its requests join it
        self._inflight: dict[tuple[str, str], Download] = {}
        #: completed upstream downloads per digest (tests and the benchmark read it)
        self.downloads = 0
        #: downloads whose task has not ended: fetching, or keeping verified bytes (flush, rename, row)
        self.active = 0

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files left by a process that is gone (or by an earlier run of ours).

        Temporary names start with the writer's pid, so a TUI and a `regcache serve` sharing a
        state directory never delete each other's downloads.
        """
        removed = 0
        for path in self.tmp.iterdir():
            pid_text = path.name.split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and alive(int(pid_text)):
                continue
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    async def lookup(self, digest: str, flight: str = "") -> StoredBlob | None:
        """The verified blob; None while ``flight``'s download of it runs here (join it) or when it is not kept."""
        for _ in range(2):
            if (digest, flight) in self._inflight:
                return None
            published_before = self.downloads
            found = await self.backend.lookup(digest)
            if found is not None or self.downloads == published_before:
                return found
            # A download of ours was published while we asked (a bucket answers slowly), perhaps of this
            # very blob: ask once more, so it is not downloaded a second time
        return None

    def verified_size(self, digest: str, flight: str = "") -> int | None:
        """The size of ``flight``'s download of ``digest`` once its bytes verified (it is being kept); else None."""
        download = self._inflight.get((digest, flight))
        return download.size if download is not None and download.verified else None

    def open(self, blob: StoredBlob, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of a verified blob."""
        return self.backend.open(blob, start, end)

    def stream(self, digest: str, fetch: BlobFetch, flight: str = "",
               on_verified: Callable[[], Awaitable[None]] | None = None,
               keep: Callable[[], bool] | None = None) -> BlobStream:
        """Join ``flight``'s download of ``digest``, starting it if none runs (then ``on_verified`` runs once
        its bytes verified, and ``keep``, asked once the source answered, says whether they are stored
        here). Call only after ``lookup()`` said no.

        No await happens between finding (or creating) the download and opening the reader's file
        descriptor, so the temporary file cannot be renamed away in between. Raises BlobStorageError
        when the temporary file cannot be created (a full disk can refuse even an empty file).
        """
        download = self._inflight.get((digest, flight))
        joined = download is not None
        if download is None:
            tmp_path = self.tmp / f"{os.getpid()}-{secrets.token_hex(8)}-{digest.replace(':', '-')}"
            try:
                fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                log.warning("cannot create a temporary file in %s: %s", self.tmp, exc)
                raise storage_error(exc, digest) from None
            download = Download(digest, tmp_path, fd, flight)
            self._inflight[(digest, flight)] = download
            download.on_verified = on_verified
            if keep is not None:
                download.keep_if = keep
            self.active += 1
            self._tg.start_soon(self._download, download, fetch, name=f"download {digest}")
        return BlobStream(download, os.open(download.tmp_path, os.O_RDONLY), joined)

    async def _fetch(self, d: Download, fetch: BlobFetch) -> None:
        """Write the upstream's bytes to the temporary file, hashing them; raise unless they verify."""
        algorithm, _, expected = d.digest.partition(":")
        hasher = hashlib.new(algorithm)
        async with fetch() as fetched:
            d.size = fetched.size
            d.keep = d.keep_if()  # decided before any reader or upload looks at it
            d.headers_received = True
            d.notify()
            notified, notified_at = 0, time.monotonic()

            def consume(data: bytes | memoryview) -> None:
                hasher.update(data)
                try:
                    write_all(d.fd, data)
                except OSError as exc:  # ENOSPC, EDQUOT, EIO: our disk failed, not the upstream
                    raise storage_error(exc, d.digest) from exc

            def progressed() -> None:
                nonlocal notified, notified_at
                if d.size is not None and d.written > d.size:
                    raise BlobIntegrityError(f"upstream sent more than the announced {d.size} bytes")
                now = time.monotonic()
                if d.written - notified >= NOTIFY_EVERY or now - notified_at >= NOTIFY_INTERVAL:
                    notified, notified_at = d.written, now
                    d.notify()

            # Hashed and written on the connection's own thread where the source can (the loop only follows the
            # count): a cold download then keeps well ahead of its clients, who read it as they read a warm file
            received = fetched.receive(consume)
            if received is not None:
                async with aclosing(received):  # nothing writes to d.fd once it is closed
                    async for written in received:
                        d.written = written
                        progressed()
            else:
                async for chunk in fetched.chunks():
                    consume(chunk)
                    d.written += len(chunk)
                    progressed()
            d.notify()
        if d.size is not None and d.written != d.size:
            raise BlobIntegrityError(f"upstream sent {d.written} of {d.size} bytes")
        if hasher.hexdigest() != expected:
            raise BlobIntegrityError(f"upstream content does not match {d.digest}; nothing was stored")
        # Readers take the last byte now: keeping the bytes (an fsync that waits for the disk, a rename, or a
        # bucket upload) goes on meanwhile, off every client's path; a failure there no longer concerns them.
        d.size = d.written
        d.verified = True
        d.notify()

    async def _fetch_verified(self, d: Download, fetch: BlobFetch) -> None:
        """Fetch and verify, then run the starter's ``on_verified`` before the bytes are published: a
        request arriving once they are stored finds what it was recorded (its source's link) too."""
        await self._fetch(d, fetch)
        if d.on_verified is not None:
            with anyio.CancelScope(shield=True):  # clients may have these bytes: a stop lets them be kept
                await d.on_verified()

    async def _download(self, d: Download, fetch: BlobFetch) -> None:
        try:
            path = await self.backend.keep(d, lambda: self._fetch_verified(d, fetch), lambda: self._publish(d))
            if path is not None:
                with anyio.CancelScope(shield=True):
                    await self._state.run(lambda s: s.put_blob(d.digest, d.written, path))
        except BaseException as exc:
            if not d.done:
                d.error = exc if isinstance(exc, Exception) else BlobDownloadError("regcache is shutting down")
                self._inflight.pop((d.digest, d.flight), None)
                unlink(d.tmp_path)
                level = logging.WARNING if isinstance(exc, Exception) else logging.INFO
                where = f" (blobs in {self.tmp.parent})" if isinstance(exc, BlobStorageError) else ""
                what = "served %s, but could not store it" if d.verified else "download of %s failed"
                log.log(level, what + ": %s%s", d.digest, d.error, where)
            elif isinstance(exc, Exception):  # stored and served; only the directory fsync or its row failed
                log.warning("stored %s, but could not finish recording it: %s", d.digest, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            os.close(d.fd)
            self.active -= 1
            d.ended = True
            d.notify()

    def _publish(self, d: Download) -> None:
        """The bytes are kept: from now on a new request finds them instead of joining ``d``."""
        del self._inflight[(d.digest, d.flight)]
        d.done = True  # verified (and sized) by _fetch already: only verified bytes are ever kept
        self.downloads += 1
