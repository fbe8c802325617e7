"""Response bodies the server sends its own way: a file handed to the server, and a stream cut short.

A file: by the server where it allows it (no byte read into Python), else bounded reads.

The ASGI extension ``http.response.zerocopysend`` (asgiref's spec) lets an app hand the server a file and
a range instead of bytes. regcache's own HTTP/1.1 protocol (regcache.proxy.server) offers it: a finished
file goes as 1 MiB windows of a memory map written to the connection, a file still being written (a
download in flight, message key :data:`GROWING`) by the kernel's ``sendfile`` on plain TCP (over TLS,
asyncio's 256 KiB reads); either way a warm blob never passes through Python and a client costs at most
a window. A streamed body (a download in flight) sends what its source yields as a
:class:`~regcache.proxy.storage.download.FilePiece` that way. A body of one piece, or
any body without the extension (another server, a test client), is read here in :data:`CHUNK` pieces,
each sent only once the connection's write buffer drained below its low-water mark (uvicorn awaits it
before every send): a client costs about two pieces, however slowly it reads.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from regcache.proxy.storage.download import STREAM_CHUNK, FilePiece

#: the ASGI extension (and message type) of a body sent from a file descriptor
ZERO_COPY_SEND = "http.response.zerocopysend"
#: reads without the extension: the per-client bound of every streamed body (download.STREAM_CHUNK says why)
CHUNK = STREAM_CHUNK
#: a key of regcache's in a ZERO_COPY_SEND message: the file is still being written (a download in flight), which
#: the server sends by the kernel's sendfile (regcache.proxy.server.FILE_SEND says why)
GROWING = "regcache.growing"
#: regcache's ASGI extension for a body whose source failed after the response started: the server closes
#: the connection (the client sees a cut transfer and retries) and logs no traceback, the app having
#: recorded the failure already
ABORT = "http.response.regcache.abort"


#: preadv's "fail rather than wait for the disk" (Linux); without it every read takes a worker thread
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def read_cached(fd: int, size: int, offset: int) -> bytes | None:
    """``size`` bytes at ``offset`` of ``fd`` if the page cache holds them all (never waiting for the disk), else
    None (not cached, or a file system that cannot tell)."""
    if size == 0:
        return b""
    if _NOWAIT is None:
        return None
    buffer = bytearray(size)
    try:
        read = os.preadv(fd, [buffer], offset, _NOWAIT)
    except OSError:  # EAGAIN: some of it is on disk only; EOPNOTSUPP: the file system cannot say
        return None
    return bytes(buffer) if read == size else None


class ClientGone(ConnectionResetError):
    """The client went away before the whole body reached it (not a failure of the cache)."""


class StreamedResponse(StreamingResponse):
    """A streamed body (a download in flight, a bucket object) whose source may fail after the start; a
    :class:`FilePiece` among its pieces is sent from its file (by the kernel where the server offers it)."""

    def __init__(self, content: AsyncIterator[bytes | FilePiece], status_code: int = 200,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(cast(AsyncIterator[bytes], content), status_code, headers=headers)
        self._pieces = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._abortable = ABORT in scope.get("extensions", {})
        self._zero_copy = ZERO_COPY_SEND in scope.get("extensions", {})
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self._pieces:
                if isinstance(chunk, FilePiece):
                    if not await self._send_piece(chunk, send):  # the client went away; the server closed it
                        close = getattr(self._pieces, "aclose", None)  # its source learns it now, not at collection
                        if close is not None:
                            await close()
                        return
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:
            if not self._abortable:
                raise
            await send({"type": ABORT})
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_piece(self, piece: FilePiece, send: Send) -> bool:
        """Send ``piece`` from its file: by the kernel where the server offers it, else in CHUNK pieces; sets
        ``piece.sent``; whether all of it reached the connection."""
        if self._zero_copy:
            with open(piece.fd, "rb", buffering=0, closefd=False) as file:  # the stream owns the descriptor
                message: dict[str, Any] = {"type": ZERO_COPY_SEND, "file": file, "offset": piece.offset,
                                           "count": piece.count, "more_body": True, GROWING: True}
                await send(message)
            piece.sent = int(message.get("sent", 0))
            return piece.sent == piece.count
        end = piece.offset + piece.count
        offset = piece.offset
        while offset < end:
            data = await read_piece(piece.fd, min(CHUNK, end - offset), offset, "the downloaded blob")
            await send({"type": "http.response.body", "body": data, "more_body": True})
            offset += len(data)
            piece.sent = offset - piece.offset
            await anyio.lowlevel.checkpoint()
        return True


class FileRangeResponse(Response):
    """Bytes ``start`` to ``end`` (exclusive) of ``path``, with ``headers`` (Content-Length is set here).

    ``done(sent, error)`` runs once the body ended: all of it sent, or ``error`` after ``sent`` bytes (an
    OSError: the file failed; :class:`ClientGone`: the client went away); it is how the event log learns
    what a transfer did.
    """

    def __init__(self, path: Path, start: int, end: int, status: int, headers: Mapping[str, str],
                 done: Callable[[int, BaseException | None], None]) -> None:
        super().__init__(None, status, headers={**headers, "Content-Length": str(end - start)})
        self.path, self.start, self.end, self.done = path, start, end, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent: int = 0
        error: BaseException | None = None
        try:
            # opening a local file does not block the loop long enough to be worth a thread hop per request
            with open(self.path, "rb") as file:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                if scope["method"] == "HEAD":
                    await send({"type": "http.response.body", "body": b""})
                elif ZERO_COPY_SEND in scope.get("extensions", {}) and self.end - self.start > CHUNK:
                    # a body of one piece is read and sent as bytes below: cheaper than loop.sendfile's set-up
                    message: dict[str, Any] = {"type": ZERO_COPY_SEND, "file": file, "offset": self.start,
                                               "count": self.end - self.start}
                    await send(message)
                    sent = int(message.get("sent", 0))  # the server says what reached the socket (0: the client left)
                    if sent < self.end - self.start:
                        error = ClientGone("the client went away")
                else:
                    sent, stayed = await self._read_and_send(file.fileno(), send, receive)
                    if not stayed:  # recorded as the client's going, not raised: nothing failed here
                        error = ClientGone("the client went away")
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.done(sent, error)

    async def _read_and_send(self, fd: int, send: Send, receive: Receive) -> tuple[int, bool]:
        """Read and send in CHUNK pieces: (bytes sent, whether the client stayed to the end)."""
        size = self.end - self.start
        if size <= CHUNK:  # one piece (a config, a small layer): no task watching for the client between pieces
            await send({"type": "http.response.body", "body": await self._read(fd, size, self.start),
                        "more_body": False})
            return size, True
        offset = self.start
        gone = False
        async with anyio.create_task_group() as tasks:
            async def watch() -> None:  # the server says so through receive(); a send into the void says nothing
                nonlocal gone
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone = True
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            while offset < self.end:
                data = await self._read(fd, min(CHUNK, self.end - offset), offset)
                offset += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": offset < self.end})
                # a read from the page cache and a send into a buffer below its high-water mark (or into a
                # closed connection) await nothing: let the other connections and the watch run between pieces
                await anyio.lowlevel.checkpoint()
            if self.start == self.end:
                await send({"type": "http.response.body", "body": b""})
            tasks.cancel_scope.cancel()  # sent: no need to watch (the end of the response is not a disconnect)
        return offset - self.start, not (gone and offset < self.end)

    async def _read(self, fd: int, size: int, offset: int) -> bytes:
        return await read_piece(fd, size, offset, str(self.path))


async def read_piece(fd: int, size: int, offset: int, what: str) -> bytes:
    """``size`` bytes at ``offset`` of ``fd``: on the event loop when the page cache holds them (a copy of at most a
    piece, as long as the socket's own copy of it; a worker-thread hop costs more CPU and latency than that),
    else on a worker thread, which may wait for the disk. ``what`` names the file in the error of a short one."""
    data = read_cached(fd, size, offset)
    if data is None:
        data = await anyio.to_thread.run_sync(os.pread, fd, size, offset)
    if len(data) < size:
        raise OSError(f"{what} is shorter than expected")
    return data
