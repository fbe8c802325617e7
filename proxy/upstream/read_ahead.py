"""Upstream connections whose answer is received on a thread of their own, a bounded amount ahead of its reader.

A blob download read on the event loop only moves when the loop gets a CPU, and the loop also sends every
client their bytes: with 16 clients pulling on 2 cores it got one thread's share among theirs, the download
stayed just ahead of its clients, all of them ended together and then queued together on their disks (README
"Performance"). Received here by a thread per connection, which also decrypts TLS, the download keeps the
upstream's pace and the loop only parses, hashes and writes what arrived: the download of 350 MB was done at
6-10 s of a 12 s round instead of 12, the clients behind it read like warm ones.

Blob answers only, on connections that are never reused: after the request is written, the connection's
thread is the only one to touch the socket (and its TLS state) until it is closed, so no TLS object is ever
used by two threads at once, and no thread waits on an idle pooled connection. A download in flight holds at
most READ_AHEAD + RECEIVE_SIZE bytes of buffers (however little each receive brings), and none once it ended.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import anyio
import anyio.lowlevel
import httpcore
import httpx

#: bytes a connection's thread receives ahead of its reader at most (a slow reader holds up the upstream at that).
#: 4 MiB in 1 MiB receives kept the download further ahead (done at 4 s of a 12 s round of 16 cold pulls, against 8 s)
#: but not the clients (cold / warm 1.08 against 1.07, 3 A/B rounds each) and cost 15 MB more peak RSS (83 against 68)
READ_AHEAD = 2 * 1024 * 1024
#: one receive of the thread, into a buffer of this size: READ_AHEAD is whole buffers, however full each one is
RECEIVE_SIZE = 512 * 1024
#: buffers received into and not yet read, at most (a receive that brings 4 KiB holds a whole buffer until it is read)
MAX_CHUNKS = READ_AHEAD // RECEIVE_SIZE
#: bytes a reader takes from what arrived ahead before it lets the loop's other tasks run (about 15 ms of a
#: download's hashing and writing). Not less: a download that yields to every client's send between its reads
#: falls back behind its clients, however fast its thread receives (16 cold pulls, README "Performance": at 1 MiB
#: 1.19-1.29x their warm time and the download done at 12-13 s of 13; at 4 MiB still at 12 s; at 16 MiB at 6-8 s)
YIELD_EVERY = 16 * 1024 * 1024


class ReadAheadStream(httpcore.AsyncNetworkStream):
    """A connected socket (or TLS socket); the first read starts the thread that receives from it.

    Writes come before the first read (a request, then its answer); the thread then owns the socket: it
    receives up to :data:`READ_AHEAD` bytes ahead and closes the socket when it ends.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        #: buffers the thread received into, and how much each holds; the reader copies out of them (on the loop's
        #: thread: the bytes it keeps are not allocated by the connection's thread, whose allocator arena would
        #: keep them) and hands each back to be received into again
        self._chunks: deque[tuple[bytearray, int]] = deque()
        self._free: list[bytearray] = []
        self._offset = 0  # into the first chunk
        #: buffers ever made (tests read it)
        self.buffers_made = 0
        self._eof = False
        self._error: OSError | None = None
        self._closing = False
        self._waiter: anyio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._since_checkpoint = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read (tests read it)."""
        with self._lock:
            return sum(count for _, count in self._chunks) - self._offset

    # -- the connection's thread ---------------------------------------------------------------------

    def _receive(self) -> None:
        try:
            while True:
                with self._room:
                    while len(self._chunks) >= MAX_CHUNKS and not self._closing:
                        self._room.wait()
                    if self._closing:
                        return
                    if self._free:
                        buffer = self._free.pop()
                    else:
                        buffer = bytearray(RECEIVE_SIZE)
                        self.buffers_made += 1
                error: OSError | None = None
                try:
                    count = self._sock.recv_into(buffer)
                except OSError as exc:  # ssl.SSLError too
                    count, error = -1, exc
                with self._lock:
                    if self._closing:
                        return
                    if count > 0:
                        self._chunks.append((buffer, count))
                    elif count == 0:
                        self._eof = True
                    else:
                        self._error = error
                    waiter, self._waiter = self._waiter, None
                if waiter is not None:
                    assert self._loop is not None
                    try:
                        self._loop.call_soon_threadsafe(waiter.set)
                    except RuntimeError:  # the loop is gone: nobody waits any more
                        return
                if count <= 0:
                    return
        finally:
            self._sock.close()
            with self._lock:  # no more receives: the buffers kept for them go now, not with the stream object
                self._free.clear()

    # -- the event loop's side ---------------------------------------------------------------------------

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._thread is None:
            if self._closing:
                raise httpcore.ReadError("the connection is closed")
            self._sock.settimeout(None)  # the thread waits as long as the answer takes; the timeout is applied here
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._receive, name="regcache upstream receive", daemon=True)
            self._thread.start()
        while True:
            with self._lock:
                if self._chunks:
                    data = self._take(max_bytes)
                    break
                if self._eof or self._closing:
                    return b""
                if self._error is not None:
                    raise httpcore.ReadError(str(self._error) or type(self._error).__name__) from self._error
                waiter = self._waiter = anyio.Event()
            try:
                with anyio.fail_after(timeout):
                    await waiter.wait()
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out waiting for the upstream's data") from None
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None
        # Data that arrived ahead is taken without waiting: the loop's other tasks run once YIELD_EVERY bytes went
        # that way (a reader that drained the read-ahead waits, and they run then anyway)
        self._since_checkpoint += len(data)
        if self._since_checkpoint >= YIELD_EVERY:
            self._since_checkpoint = 0
            await anyio.lowlevel.checkpoint()
        return data

    def _take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what was received (the lock held)."""
        head, count = self._chunks[0]
        with memoryview(head) as view:
            data = bytes(view[self._offset:min(count, self._offset + max_bytes)])
        self._offset += len(data)
        if self._offset >= count:
            self._chunks.popleft()
            self._offset = 0
            if not (self._eof or self._error or self._closing):  # for the thread's next receive
                self._free.append(head)
            if len(self._chunks) == MAX_CHUNKS - 1:
                self._room.notify()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._thread is not None or self._closing:
            raise httpcore.WriteError("the connection no longer takes requests (one answer per connection)")

        def send() -> None:
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)

        try:
            await anyio.to_thread.run_sync(send)
        except TimeoutError:
            raise httpcore.WriteTimeout("timed out sending to the upstream") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        with self._room:
            if self._closing:
                return
            self._closing = True
            self._room.notify()
            self._chunks.clear()
            self._free.clear()
        if self._thread is None:
            self._sock.close()
            return
        try:  # wakes the thread out of its receive; the thread closes the socket (it may be using it now)
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        if self._thread is not None:
            raise httpcore.ConnectError("TLS must start before the first read")

        def handshake() -> ssl.SSLSocket:
            self._sock.settimeout(timeout)
            return ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)

        try:
            tls = await anyio.to_thread.run_sync(handshake)
        except TimeoutError:
            self._sock.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except OSError as exc:  # ssl.SSLError (an untrusted certificate...) stays the cause: tls.tls_error finds it
            self._sock.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return ReadAheadStream(tls)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "socket":
            return self._sock
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "is_readable":  # never pooled; answered as a closed-by-the-server check would be
            with self._lock:
                return bool(self._chunks) or self._eof or self._error is not None
        return None


class ReadAheadBackend(httpcore.AsyncNetworkBackend):
    """Makes :class:`ReadAheadStream` connections (connect and TLS handshake on a worker thread)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        def connect() -> socket.socket:
            sock = socket.create_connection((host, port), timeout,
                                            source_address=(local_address, 0) if local_address else None)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
            except OSError:
                sock.close()
                raise
            return sock

        try:
            return ReadAheadStream(await anyio.to_thread.run_sync(connect))
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not upstreams")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class OneAnswerTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over :class:`ReadAheadBackend` connections that carry one answer each: no connection
    is kept for another request. (The public-addresses-only twin is a ``PublicOnlyTransport`` over
    ``PublicAddressBackend(ReadAheadBackend())`` without keep-alive.)"""

    def __init__(self, max_connections: int | None, ssl_context: ssl.SSLContext) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=max_connections, max_keepalive_connections=0,
            network_backend=ReadAheadBackend())
