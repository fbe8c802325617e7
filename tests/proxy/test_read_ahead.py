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

import anyio
import httpcore
import pytest
import trustme

from regcache.proxy.upstream import read_ahead
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
