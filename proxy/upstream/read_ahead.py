"""Upstream connections whose answer is received on a thread of their own, a bounded amount ahead of its reader.

A blob download read on the event loop only moves when the loop gets a CPU, and the loop also sends every
client their bytes: with 16 clients pulling on 2 cores it got one thread's share among theirs, the download
stayed just ahead of its clients, all of them ended together and then queued together on their disks (README
"Performance"). Received here by a thread per connection, which also decrypts TLS, the download keeps the
upstream's pace and the loop only parses, hashes and writes what arrived: the download of 350 MB was done at
8-11 s of a 12 s round instead of 12, the clients behind it read like warm ones. With its body taken (below),
the thread also hashes and writes it: done at 6.5-7.5 s, and 0.1 s less of the loop's CPU per 350 MB pull.

Blob answers only, on connections that are never reused: after the request is written, the connection's
thread is the only one to touch the socket (and its TLS state) until it is closed, so no TLS object is ever
used by two threads at once, and no thread waits on an idle pooled connection. A download in flight holds at
most READ_AHEAD + RECEIVE_SIZE bytes of buffers (however little each receive brings), and none once it ended.

A body of a known length can also be taken from httpcore once the head is parsed (:meth:`ReadAheadStream.
take_body`): the connection's thread then hands it to a consumer as it arrives (the blob store hashes and writes
it there, both without the interpreter's lock), and the loop only follows the count. The first head is never
handed to httpcore with bytes after it, so nothing of the body is left behind in h11's buffer.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
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

#: where a response head ends, as h11 finds it (a blank line; a bare LF is tolerated)
_BLANK_LINE = re.compile(rb"\n\r?\n")

#: what takes a body's bytes on the connection's thread (:meth:`ReadAheadStream.take_body`); what it raises ends
#: the body with that error
Consume = Callable[[memoryview], None]


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
        #: the first head was handed to httpcore (up to its blank line), and how much was handed after it
        self._head_done = False
        self._head_tail = b""  # the last bytes handed while its end was looked for
        self._past_head = 0
        #: the body taken over (take_body): its consumer, the bytes it still wants, and the bytes it took
        self._consume: Consume | None = None
        self._body_left = 0
        self._consumed = 0
        self._body_error: BaseException | None = None
        #: held by whoever passes bytes to the consumer (the connection's thread, or a worker for what arrived
        #: before the body was taken): one at a time, in order, and none once end_body returned
        self._feeding = threading.Lock()
        #: the consumer is in a call (a disk that stalls is not an upstream that stalls: no read timeout runs)
        self._consuming = False
        #: since when the thread has waited for the upstream's next bytes, and nothing else
        self._waiting_since = time.monotonic()
        #: the thread closed the socket: closing the stream must not touch its descriptor (maybe reused by then)
        self._sock_closed = False

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
                    while self._consume is None and len(self._chunks) >= MAX_CHUNKS and not self._closing:
                        self._room.wait()
                    if self._closing:
                        return
                    if self._free:
                        buffer = self._free.pop()
                    else:
                        buffer = bytearray(RECEIVE_SIZE)
                        self.buffers_made += 1
                    self._waiting_since = time.monotonic()
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
                    taken = self._consume is not None
                if taken:
                    with self._feeding:
                        wanted = self._feed()
                    if not wanted:  # the body is whole (or failed): the connection carries nothing more
                        return
                elif not self._wake():
                    return
                if count <= 0:
                    return
        finally:
            with self._lock:  # no more receives: the buffers kept for them go now, not with the stream object
                self._free.clear()
                self._sock_closed = True
                self._sock.close()  # under the lock: aclose's shutdown never meets a descriptor closed meanwhile

    def _wake(self) -> bool:
        """Wake the loop's reader, if one waits; False when the loop is gone."""
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(waiter.set)
            except RuntimeError:  # the loop is gone: nobody waits any more
                return False
        return True

    def _feed(self) -> bool:
        """Pass what was received to the body's consumer, in order (``_feeding`` held); False once the body is
        whole, failed, or ended by :meth:`end_body`."""
        consume = self._consume
        assert consume is not None
        while True:
            with self._lock:
                if self._closing or self._body_error is not None:
                    return False
                if self._body_left == 0:
                    return False
                if not self._chunks:
                    if self._error is not None:
                        self._body_error = httpx.ReadError(str(self._error) or type(self._error).__name__)
                    elif self._eof:
                        self._body_error = httpx.RemoteProtocolError(
                            f"peer closed connection without sending complete message body: received "
                            f"{self._consumed} bytes, expected {self._consumed + self._body_left}")
                    else:
                        return True
                    break
                buffer, count = self._chunks.popleft()
                start, self._offset = self._offset, 0
                self._consuming = True
            take = min(count - start, self._body_left)
            try:
                with memoryview(buffer) as view:
                    consume(view[start:start + take])
            except Exception as exc:  # the consumer's own failure (the blob store's disk), as it raised it
                with self._lock:
                    self._consuming = False
                    self._body_error = exc.with_traceback(None)  # its frames would keep this stream and buffer
                break
            with self._lock:
                self._consuming = False
                self._waiting_since = time.monotonic()
                self._body_left -= take
                self._consumed += take
                self._recycle(buffer)
            if not self._wake():
                return False
        self._wake()
        return False

    # -- the event loop's side ---------------------------------------------------------------------------

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._consume is not None:
            raise httpcore.ReadError("the body was taken from this connection")
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
        """Up to ``max_bytes`` of what was received (the lock held); while the first head is being read, no
        byte past its end."""
        head, count = self._chunks[0]
        stop = min(count, self._offset + max_bytes)
        with memoryview(head) as view:
            if self._head_done:
                self._past_head += stop - self._offset
            else:
                stop = self._head_end(view, stop)
            data = bytes(view[self._offset:stop])
        self._offset += len(data)
        if self._offset >= count:
            self._chunks.popleft()
            self._offset = 0
            self._recycle(head)
            if len(self._chunks) == MAX_CHUNKS - 1:
                self._room.notify()
        return data

    def _recycle(self, buffer: bytearray) -> None:
        """Keep a buffer read out for the thread's next receive, if it receives again (the lock held)."""
        if not (self._eof or self._error or self._closing):
            self._free.append(buffer)

    def _head_end(self, view: memoryview, stop: int) -> int:
        """``stop``, or where the first head ends if it ends in ``view[offset:stop]`` (just past its blank line)."""
        tail = self._head_tail
        window = tail + bytes(view[self._offset:stop])
        found = _BLANK_LINE.search(window)
        if found is None:
            self._head_tail = window[-2:]  # a blank line is 3 bytes at most: its start may be in this read
            return stop
        self._head_done = True
        return self._offset + found.end() - len(tail)

    # -- a body taken from httpcore ---------------------------------------------------------------------

    def can_take_body(self, size: int) -> bool:
        """Whether :meth:`take_body` can take ``size`` bytes now: httpcore was handed exactly the first head and
        nothing after it (not an interim 1xx head, nor a body it started to read), and the answer is open."""
        with self._lock:
            return self._can_take(size)

    def _can_take(self, size: int) -> bool:
        return self._thread is not None and self._head_done and not self._past_head and not self._closing \
            and size > 0 and self._consume is None

    def take_body(self, size: int, consume: Consume) -> bool:
        """Take the ``size`` bytes after the head httpcore just parsed from it: the connection's thread passes
        them to ``consume`` as they arrive (what arrived already: :meth:`feed_received`), never more than
        ``size`` in all, until :meth:`end_body`. False, and nothing taken, unless :meth:`can_take_body`."""
        with self._room:
            if not self._can_take(size):
                return False
            self._consume, self._body_left = consume, size
            self._room.notify()  # a thread waiting for room receives again: what it receives goes to consume
        return True

    def feed_received(self) -> None:
        """Pass what arrived before the body was taken to its consumer (blocking: on a worker thread). The
        connection's thread passes the rest, but it may be waiting for bytes after the body that never come."""
        with self._feeding:
            self._feed()

    async def body_consumed(self, seen: int, timeout: float | None) -> int:
        """The bytes of the taken body consumed so far, once more than ``seen`` (or all of them); raises what
        ended it (the consumer's error, or the upstream's), or ReadTimeout once the thread waited ``timeout``
        for the upstream's bytes (the time a consumer call takes is not the upstream's)."""
        while True:
            with self._lock:
                if self._body_error is not None:
                    raise self._body_error
                if self._consumed > seen or self._body_left == 0:
                    return self._consumed
                if self._closing:
                    raise httpx.ReadError("the connection is closed")
                left = timeout
                if timeout is not None and not self._consuming:
                    left = timeout - (time.monotonic() - self._waiting_since)
                    if left <= 0:
                        raise httpx.ReadTimeout("timed out waiting for the upstream's data")
                waiter = self._waiter = anyio.Event()
            try:
                with anyio.move_on_after(left):  # then look again: a consumer call may have been running
                    await waiter.wait()
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None

    async def end_body(self) -> None:
        """Close the connection and return once nothing passes bytes to the consumer any more (the caller may
        then close what it writes to): the one passing them now finishes that call first."""
        await self.aclose()
        if self._feeding.acquire(blocking=False):  # nobody passes bytes now, and nobody will (closing is set)
            self._feeding.release()
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._wait_fed)

    def _wait_fed(self) -> None:
        with self._feeding:
            pass

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
        with self._lock:  # the thread closes the socket under the lock: not while this shuts it down
            if self._sock_closed:
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
