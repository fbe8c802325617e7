"""Upstream connections received on a thread of their own (regcache.proxy.upstream.read_ahead), against real
sockets: a local TCP (or TLS) server on a thread sends what each test needs."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing

import anyio
import httpcore
import httpx
import pytest
import trustme

from regcache.proxy.core.settings import UpstreamLimits
from regcache.proxy.upstream import read_ahead
from regcache.proxy.upstream.client import UpstreamBlob, UpstreamUnreachable
from regcache.proxy.upstream.read_ahead import ReadAheadBackend, ReadAheadStream
from regcache.proxy.upstream.tls import tls_error


@pytest.fixture
def anyio_backend():
    return "asyncio"


Serve = Callable[[socket.socket], None]


@pytest.fixture
def server() -> Iterator[Callable[..., int]]:
    """Start a one-connection server on 127.0.0.1 running ``serve(conn)``; returns its port."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(serve: Serve, tls: ssl.SSLContext | None = None) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def run() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                serve(conn)
            except OSError:
                pass
            finally:
                conn.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return listener.getsockname()[1]

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(5)


def _send_after_request(data: bytes) -> Serve:
    def serve(conn: socket.socket) -> None:
        conn.recv(1024)  # the request
        conn.sendall(data)
    return serve


def _silent(conn: socket.socket) -> None:
    conn.recv(1024)  # the request
    conn.recv(1024)  # nothing is sent: this returns once the client closed the connection


@pytest.mark.anyio
async def test_an_answer_larger_than_the_read_ahead_arrives_whole_and_the_thread_stays_within_its_bound(server):
    body = os.urandom(5 * read_ahead.READ_AHEAD + 12345)
    port = server(_send_after_request(body))
    stream = await ReadAheadBackend().connect_tcp("127.0.0.1", port, timeout=5)
    assert isinstance(stream, ReadAheadStream)
    await stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)
    hasher, received, most = hashlib.sha256(), 0, 0
    while True:
        data = await stream.read(65536, timeout=5)
        if not data:
            break
        assert len(data) <= 65536
        hasher.update(data)
        received += len(data)
        most = max(most, stream.buffered)
        if received < 4 * read_ahead.READ_AHEAD:
            await anyio.sleep(0.001)  # a slow reader: the thread must wait for room, not keep receiving
    await stream.aclose()
    assert received == len(body) and hasher.digest() == hashlib.sha256(body).digest()
    assert 0 < most <= read_ahead.READ_AHEAD + read_ahead.RECEIVE_SIZE


def _send_in_small_pieces(data: bytes, piece: int, pause: float) -> Serve:
    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.recv(1024)  # the request
        for start in range(0, len(data), piece):
            conn.sendall(data[start:start + piece])
            time.sleep(pause)
    return serve


@pytest.mark.anyio
async def test_an_answer_that_trickles_in_small_pieces_holds_a_bounded_number_of_buffers(server):
    """Each receive brings a few KiB while the reader is away: the thread stops at MAX_CHUNKS buffers (counting
    bytes instead, 2 MiB of 4 KiB pieces would have been 512 buffers of 512 KiB)."""
    body = os.urandom(2 * read_ahead.READ_AHEAD)
    port = server(_send_in_small_pieces(body, 4096, 0.0002))
    stream = await ReadAheadBackend().connect_tcp("127.0.0.1", port, timeout=5)
    assert isinstance(stream, ReadAheadStream)
    await stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)
    parts = [await stream.read(65536, timeout=5)]
    await anyio.sleep(1.0)  # away while the upstream trickles
    while data := await stream.read(65536, timeout=5):
        parts.append(data)
    await stream.aclose()
    assert b"".join(parts) == body
    assert 0 < stream.buffers_made <= read_ahead.MAX_CHUNKS + 1


@pytest.mark.anyio
async def test_a_read_times_out_when_the_upstream_sends_nothing_and_closing_ends_the_thread(server):
    port = server(_silent)
    stream = await ReadAheadBackend().connect_tcp("127.0.0.1", port, timeout=5)
    await stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)
    started = time.monotonic()
    with pytest.raises(httpcore.ReadTimeout):
        await stream.read(65536, timeout=0.3)
    assert time.monotonic() - started < 2
    thread = stream._thread
    assert thread is not None and thread.is_alive()  # blocked in its receive
    await stream.aclose()
    thread.join(2)
    assert not thread.is_alive()  # woken by the shutdown, and it closed the socket
    assert stream._sock.fileno() == -1
    assert await stream.read(65536, timeout=1) == b""
    with pytest.raises(httpcore.WriteError):  # one answer per connection: no request after it started
        await stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=1)


@pytest.mark.anyio
async def test_an_unreachable_upstream_is_a_connect_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(httpcore.ConnectError):
        await ReadAheadBackend().connect_tcp("127.0.0.1", port, timeout=5)


@pytest.mark.anyio
async def test_tls_is_verified_in_the_handshake_and_its_failure_is_the_errors_cause(server):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)

    port = server(_send_after_request(b"over tls"), tls=server_context)
    plain = await ReadAheadBackend().connect_tcp("127.0.0.1", port, timeout=5)
    stream = await plain.start_tls(trusted, server_hostname="localhost", timeout=5)
    assert isinstance(stream.get_extra_info("ssl_object"), ssl.SSLSocket)
    await stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)
    data = b""
    while chunk := await stream.read(65536, timeout=5):
        data += chunk
    await stream.aclose()
    assert data == b"over tls"

    port = server(_send_after_request(b"never read"), tls=server_context)
    plain = await ReadAheadBackend().connect_tcp("127.0.0.1", port, timeout=5)
    with pytest.raises(httpcore.ConnectError) as refused:
        await plain.start_tls(ssl.create_default_context(), server_hostname="localhost", timeout=5)
    assert isinstance(tls_error(refused.value), ssl.SSLCertVerificationError)


# -- a body taken from httpcore (ReadAheadStream.take_body, through UpstreamBlob.receive as the blob store uses it) --

def _answer(head: bytes, body: bytes, after: bytes = b"", close: bool = False) -> Serve:
    """Send ``head``, ``body`` and ``after`` in one piece (the first receive holds the head and the body's
    start); keep the connection open unless ``close``, as a keep-alive upstream does."""
    def serve(conn: socket.socket) -> None:
        conn.recv(1024)  # the request
        conn.sendall(head + body + after)
        if not close:
            conn.recv(1024)  # returns once the client closed the connection
    return serve


def _head(size: int, eol: bytes = b"\r\n", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK" + eol + b"Content-Length: " + str(size).encode() + eol + extra + eol).replace(
        b"\r\n", eol)


class _Consumer:
    """Hashes what it is handed and notes the threads that handed it."""

    def __init__(self, fail_after: int | None = None, pause: float = 0.0) -> None:
        self.hasher = hashlib.sha256()
        self.count = 0
        self.calls = 0
        self.threads: set[int] = set()
        self.fail_after = fail_after
        self.pause = pause
        self.returned_at: float | None = None

    def __call__(self, view: memoryview) -> None:
        self.threads.add(threading.get_ident())
        self.calls += 1
        if self.fail_after is not None and self.count + len(view) > self.fail_after:
            raise OSError(28, "No space left on device")
        time.sleep(self.pause)
        self.hasher.update(view)
        self.count += len(view)
        self.returned_at = time.monotonic()


async def _blob(port: int, limits: UpstreamLimits | None = None,
                timeout: float = 5) -> tuple[httpx.AsyncClient, UpstreamBlob]:
    client = httpx.AsyncClient(transport=read_ahead.OneAnswerTransport(None, ssl.create_default_context()),
                               timeout=timeout)
    response = await client.send(client.build_request("GET", f"http://127.0.0.1:{port}/blob"), stream=True)
    announced = response.headers.get("content-length")
    return client, UpstreamBlob("upstream.test", "sha256:" + "0" * 64, response,
                                int(announced) if announced else None, limits or UpstreamLimits())


async def _consume_all(blob: UpstreamBlob, consume: _Consumer) -> list[int]:
    received = blob.receive(consume)
    assert received is not None, "the body was not taken"
    async with aclosing(received):
        return [count async for count in received]


@pytest.mark.anyio
@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
async def test_a_taken_body_reaches_its_consumer_whole_on_the_connections_thread_and_no_byte_more(server, eol):
    """Head, body and what follows come in one piece: httpcore is handed the head only (a body byte left in
    h11's buffer would be missing here), the consumer gets exactly the announced bytes, off the loop's thread."""
    body = os.urandom(3 * read_ahead.READ_AHEAD + 777)
    port = server(_answer(_head(len(body), eol), body, after=b"HTTP/1.1 200 OK\r\n\r\nnot this blob's"))
    client, blob = await _blob(port)
    consumer = _Consumer()
    counts = await _consume_all(blob, consumer)
    await blob._response.aclose()
    await client.aclose()
    assert consumer.count == len(body) and consumer.hasher.digest() == hashlib.sha256(body).digest()
    assert counts == sorted(counts) and counts[-1] == len(body)
    assert threading.get_ident() not in consumer.threads


@pytest.mark.anyio
async def test_a_body_after_an_interim_head_is_not_taken_and_reads_whole(server):
    body = os.urandom(100_000)
    port = server(_answer(b"HTTP/1.1 100 Continue\r\n\r\n" + _head(len(body)), body))
    client, blob = await _blob(port)
    assert blob.receive(_Consumer()) is None  # h11 holds bytes past the first head: read as before
    data = b"".join([chunk async for chunk in blob.chunks()])
    await blob._response.aclose()
    await client.aclose()
    assert data == body


@pytest.mark.anyio
async def test_a_chunked_body_is_not_taken(server):
    port = server(_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"))
    client, blob = await _blob(port)
    assert blob.size is None and blob.receive(_Consumer()) is None
    assert b"".join([chunk async for chunk in blob.chunks()]) == b"hello"
    await blob._response.aclose()
    await client.aclose()


@pytest.mark.anyio
async def test_a_taken_body_cut_short_by_the_upstream_is_an_error_naming_both_sizes(server):
    body = os.urandom(read_ahead.READ_AHEAD)
    port = server(_answer(_head(len(body) + 1000), body, close=True))
    client, blob = await _blob(port)
    consumer = _Consumer()
    with pytest.raises(httpx.RemoteProtocolError, match=f"received {len(body)} bytes, expected {len(body) + 1000}"):
        await _consume_all(blob, consumer)
    await client.aclose()
    assert consumer.count == len(body)


@pytest.mark.anyio
async def test_the_consumers_error_ends_the_body_with_that_error_and_nothing_more_is_handed(server):
    """The blob store's disk filling up, on the connection's thread, reaches the download as it was raised."""
    body = os.urandom(4 * read_ahead.READ_AHEAD)
    port = server(_answer(_head(len(body)), body))
    client, blob = await _blob(port)
    consumer = _Consumer(fail_after=read_ahead.READ_AHEAD)
    with pytest.raises(OSError, match="No space left"):
        await _consume_all(blob, consumer)
    calls = consumer.calls
    await anyio.sleep(0.2)
    await client.aclose()
    assert consumer.calls == calls and consumer.count <= read_ahead.READ_AHEAD


@pytest.mark.anyio
async def test_closing_a_taken_body_returns_only_once_its_consumer_is_no_longer_called(server):
    """What the consumer writes to is closed right after: a call still running then would write to a closed
    (or reused) file descriptor."""
    body = os.urandom(8 * read_ahead.RECEIVE_SIZE)
    port = server(_answer(_head(len(body)), body))
    client, blob = await _blob(port)
    consumer = _Consumer(pause=0.3)
    received = blob.receive(consumer)
    assert received is not None
    async with aclosing(received):
        assert await anext(received) > 0
    closed_at = time.monotonic()  # the consumer may have been in a call: it returned before this
    calls = consumer.calls
    await anyio.sleep(0.5)
    await blob._response.aclose()
    await client.aclose()
    assert consumer.returned_at is not None and consumer.returned_at <= closed_at
    assert consumer.calls == calls and consumer.count < len(body)


@pytest.mark.anyio
async def test_a_taken_body_that_stalls_times_out_and_one_that_drips_is_cut_below_the_minimum_rate(server):
    port = server(_answer(_head(1_000_000), b"x" * 1000))  # then nothing, the connection open
    client, blob = await _blob(port, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await _consume_all(blob, _Consumer())
    assert time.monotonic() - started < 3
    await client.aclose()

    body = b"y" * 40_000

    def drip(conn: socket.socket) -> None:  # 1 KiB every 0.1 s: 10 KiB/s
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.recv(1024)
        conn.sendall(_head(len(body)))
        for start in range(0, len(body), 1024):
            conn.sendall(body[start:start + 1024])
            time.sleep(0.1)

    port = server(drip)
    client, blob = await _blob(port, UpstreamLimits(blob_min_rate=64 * 1024, blob_rate_window=1.0), timeout=30)
    started = time.monotonic()
    with pytest.raises(UpstreamUnreachable, match="slower than 64 KiB/s over 1 s"):
        await _consume_all(blob, _Consumer())
    assert time.monotonic() - started < 3
    await client.aclose()


@pytest.mark.anyio
async def test_a_consumer_slower_than_the_read_timeout_is_not_an_upstream_timeout(server):
    """Every byte arrived at once; the disk takes 0.4 s per write with a 0.25 s read timeout: the upstream did
    not stall, so the body completes (a stalled disk is not reported as the upstream's timeout)."""
    body = os.urandom(4 * read_ahead.RECEIVE_SIZE)
    port = server(_answer(_head(len(body)), body))
    client, blob = await _blob(port, timeout=0.25)
    consumer = _Consumer(pause=0.4)
    counts = await _consume_all(blob, consumer)
    await blob._response.aclose()
    await client.aclose()
    assert counts[-1] == len(body) and consumer.hasher.digest() == hashlib.sha256(body).digest()


@pytest.mark.anyio
async def test_a_receive_never_started_takes_nothing_and_the_body_still_reads(server):
    """The body is taken when the iteration starts, inside what ends it: an iterator dropped unstarted leaves
    no thread handing bytes to a consumer whose file may be closed."""
    body = os.urandom(100_000)
    port = server(_answer(_head(len(body)), body))
    client, blob = await _blob(port)
    consumer = _Consumer()
    received = blob.receive(consumer)
    assert received is not None
    await received.aclose()
    data = b"".join([chunk async for chunk in blob.chunks()])
    await blob._response.aclose()
    await client.aclose()
    assert data == body and consumer.calls == 0
