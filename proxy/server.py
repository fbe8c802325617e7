"""Running the registry app: as the main loop of `regcache serve`, or embedded on its own thread.

``ProxyServer.serve`` binds the socket before it reports readiness through ``task_status``, so a
port that is taken is an error for the caller, not a log line. The app's engine (cache, downloads,
event log, background jobs) runs apart from its listener (:meth:`ProxyServer.running`): the TUI's
embedded proxy keeps it, and the jobs the TUI starts in it, when its port cannot be bound.

Clients are not trusted to be reasonable (the settings are read when the proxy starts): a request head
must arrive within ``header-timeout`` of connecting or of the previous response, an idle kept-alive
connection is closed after ``keepalive-timeout``, and at most ``max-connections`` (never more than the
open-files limit allows, whose soft value is raised to the hard one) are open at once: over it, the
connections still sending a head are closed, oldest first, before a new one is refused, so idle
connections never starve a pull. ``X-Forwarded-For``/``-Proto`` are read only from ``--trusted-proxy``
addresses; ``Forwarded`` never.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import ipaddress
import logging
import mmap
import os
import re
import resource
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import h11
import uvicorn
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from regcache.proxy.core.errors import RegcacheError, unwrap_error
from regcache.proxy.core.settings import HEADER_TIMEOUT_SETTING, MAX_CONNECTIONS_SETTING, ServerLimits
from regcache.proxy.http.errors import API_VERSION_HEADER, RegistryError
from regcache.proxy.http.registry import check_storage, create_app, create_metrics_app
from regcache.proxy.http.sendfile import ABORT, CHUNK, GROWING, ZERO_COPY_SEND
from regcache.proxy.jobs.operations import Operations
from regcache.proxy.secrets import SecretResolver

log = logging.getLogger("regcache.server")

T = TypeVar("T")

DEFAULT_LISTEN = "127.0.0.1:5000"


class ListenError(RegcacheError):
    """The proxy could not listen on its address."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 <= int(port) < 65536:
            raise ListenError(f"listen address {text!r} must be HOST:PORT, e.g. 127.0.0.1:5000")
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: the most a request line and its headers may take (uvicorn's default); more is refused with a 431
MAX_REQUEST_HEAD = 16 * 1024


def _raw_response(error: RegistryError) -> bytes:
    """``error`` as a whole HTTP/1.1 response that closes the connection, for a connection with no request (yet)."""
    body = error.body()
    head = [f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", *(f"{name.lower()}: {value}" for name, value in API_VERSION_HEADER.items()),
            *(f"{name.lower()}: {value}" for name, value in error.headers.items()), "connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class ConnectionGuard:
    """The client connections of one proxy (all its listeners) against one cap.

    Connections waiting for a request head (new, or kept alive between requests) are kept oldest first;
    at the cap, a new connection closes the oldest of them, and is refused (503) only when every open
    connection is serving a request. A slowloris holds connections that send their head slowly; they
    are the first to go, and the newest (a real client's, which sends its head at once) the last.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: set[_H11Protocol] = set()
        self._waiting: OrderedDict[_H11Protocol, None] = OrderedDict()
        #: connections closed to make room, and connections refused, since the start
        self.shed = 0
        self.refused = 0
        self._logged = 0.0

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, connection: _H11Protocol) -> bool:
        """Count a new connection, closing waiting ones to make room; False: refuse it (all are serving)."""
        while len(self._open) >= self.cap and self._waiting:
            oldest, _ = self._waiting.popitem(last=False)
            self._open.discard(oldest)
            oldest.shed()
            self.shed += 1
            self._log(f"closed connections still sending their request head to make room (setting "
                      f"{MAX_CONNECTIONS_SETTING}: {self.cap})")
        if len(self._open) >= self.cap:
            self.refused += 1
            self._log(f"refused new connections: all {self.cap} are serving requests (setting "
                      f"{MAX_CONNECTIONS_SETTING})")
            return False
        self._open.add(connection)
        self._waiting[connection] = None
        return True

    def waiting(self, connection: _H11Protocol) -> None:
        """The connection waits for a request head: the newest waiting one."""
        if connection in self._open:
            self._waiting.pop(connection, None)
            self._waiting[connection] = None

    def serving(self, connection: _H11Protocol) -> None:
        self._waiting.pop(connection, None)

    def closed(self, connection: _H11Protocol) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)

    def _log(self, message: str) -> None:
        now = time.monotonic()
        if now - self._logged >= 10:  # a flood would otherwise write a line per connection
            self._logged = now
            log.warning("%s; %d shed and %d refused so far", message, self.shed, self.refused)


class _Config(uvicorn.Config):
    """uvicorn's configuration, with what our protocol adds: the connection guard and the head timeout."""

    def __init__(self, app: ASGIApp, *, guard: ConnectionGuard, header_timeout: float, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self.header_timeout = header_timeout


#: offer ``http.response.zerocopysend`` (the kernel's sendfile) to the app. On: a warm file then costs a client
#: no buffer at all. With reads bounded to 1 MiB pieces (download.STREAM_CHUNK, the memory bound), the kernel's
#: sendfile was the faster way here too: one curl of a warm 200 MB blob ~2,000 MB/s against ~1,700 (4 MiB reads,
#: unbounded, did ~2,250), 64 at once 5.0 s against 7.6-8.3 s with a flat 48 MB RSS against 115 MB (loopback,
#: 2 cores; the read path stays tested in tests/proxy/test_sendfile.py)
OFFER_ZERO_COPY = True
#: how a finished file handed over by ``http.response.zerocopysend`` reaches the socket: "map" (1 MiB windows of a
#: memory map written to the connection: the kernel copies the page cache into the socket) or "sendfile" (the
#: kernel queues the page cache pages themselves). "map" is faster for the client here: one curl of a warm 200 MB
#: blob 2,830 MB/s against 2,030 (medians of 8, loopback, 2 cores; a bare blocking-sendfile server 2,090), 16
#: concurrent warm skopeo pulls 12.2 s against 13.3 (medians of 3): a reader copies out of the socket's own large
#: pages faster than out of page cache pages one by one. A piece of a file still being written (message key
#: GROWING: a download's clients) smaller than a window goes by sendfile (a client at the download's front gets
#: small pieces often: 0.7 s less of regcache's CPU for 16 of them); a piece of a window or more (a client behind
#: a download that runs ahead, regcache.proxy.upstream.read_ahead) is read like a warm file, from the map
FILE_SEND = "map"
#: the window of a file mapped and written at once: a slow client holds at most about one, the bound of every
#: streamed body (sendfile.CHUNK, download.STREAM_CHUNK)
MAP_WINDOW = CHUNK


class _FileSpan:
    """``count`` bytes of a file, as h11 frames them: it only asks their length (``send_with_data_passthrough``)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


class _SocketWriter:
    """Writes a window of a mapped file to a plain TCP connection's socket beside its transport (which holds
    nothing meanwhile), as the socket takes it: what it does not take at once is written by the loop's writer
    callback as soon as it has room, as the transport's own buffer would be, and the protocol's flow is paused
    until all of it went. The pages sent leave the process's count as it goes (a slow client would otherwise
    hold a window's pages). It watches a duplicate of the socket's descriptor: the loop watches the original
    for the transport."""

    #: sent bytes of a window after which its pages are released while the rest waits
    RELEASE_EVERY = 256 * 1024

    def __init__(self, fileno: int, flow: FlowControl) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = os.dup(fileno)
        self._flow = flow
        self._window: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._done = self._released = 0
        self._error: OSError | None = None

    def write(self, window: mmap.mmap, view: memoryview, start: int) -> None:
        """Write ``view`` (all of ``window``) from ``start``: what the socket takes now, the rest from the writer
        callback (the flow is paused until then)."""
        self._window, self._view, self._done, self._released = window, view, start, 0
        self._send()
        if self._view is not None:
            self._flow.pause_writing()
            self._loop.add_writer(self._fd, self._send)

    def _send(self) -> None:
        view, window = self._view, self._window
        if view is None or window is None:
            return
        try:
            self._done += os.write(self._fd, view[self._done:])
        except BlockingIOError:
            return
        except OSError as exc:  # the client went away (a ConnectionError), or worse: check() raises it
            self._error, self._done = exc, len(view)
        if self._done < len(view):
            sent = self._done - self._done % mmap.PAGESIZE
            if sent - self._released >= self.RELEASE_EVERY:
                window.madvise(mmap.MADV_DONTNEED, 0, sent)
                self._released = sent
            return
        # all sent: the pages stay in the page cache, the process no longer counts them (now: the task that unmaps
        # the window runs a turn of the loop later, and 48 connections' windows waiting for it were 20 MB)
        window.madvise(mmap.MADV_DONTNEED)
        self.stop()

    def check(self) -> None:
        """Raise what a write met (a client that went away is a ConnectionError)."""
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Done with the window, sent or not (all of it went, the task was cancelled, or the client left)."""
        self._view = self._window = None
        if self._loop.remove_writer(self._fd):
            self._flow.resume_writing()

    def close(self) -> None:
        self.stop()
        os.close(self._fd)


class _ZeroCopyCycle(RequestResponseCycle):
    """uvicorn's request cycle, also taking ``http.response.zerocopysend`` (the file goes to the socket as
    FILE_SEND says, framed by h11) and regcache's ``http.response.regcache.abort`` (a body cut short: the
    connection closes quietly)."""

    async def send(self, message: Any) -> None:
        if message["type"] == ABORT:  # the body's source failed after the start: a cut transfer, no traceback
            self.disconnected = True
            self.transport.close()
            return
        if message["type"] != ZERO_COPY_SEND:
            await super().send(message)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"'{ZERO_COPY_SEND}' is a response body: send it after the start, before the end")
        count = int(message["count"])
        if self.scope["method"] != "HEAD" and count > 0:
            try:
                # h11 frames a Data of any object with a length, and gives it back as it is (send_with_data_passthrough)
                framed = self.conn.send_with_data_passthrough(h11.Data(data=_FileSpan(count)))  # type: ignore[arg-type]
                for part in framed or ():
                    if isinstance(part, _FileSpan):
                        await self._send_file(message["file"], int(message.get("offset", 0)), count,
                                              bool(message.get(GROWING)))
                    else:
                        self.transport.write(part)
            except ConnectionError:  # the client went away mid-file: as uvicorn treats a lost connection
                self.disconnected = True
                self.transport.close()
                return
        message["sent"] = count  # what the app reads back: the whole range reached the socket
        # the end of the body (or more to come) as uvicorn does it: keep-alive, close, next request
        await super().send({"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)})

    async def _send_file(self, file: Any, offset: int, count: int, growing: bool) -> None:
        """``count`` bytes of ``file`` at ``offset`` to the client, the way :data:`FILE_SEND` says."""
        transport = self.transport
        if transport.is_closing():
            raise ConnectionResetError("the connection is closing")
        if FILE_SEND == "map" and (not growing or count >= MAP_WINDOW):
            await self._send_mapped(file.fileno(), offset, count)
            return
        # sendfile: first what the socket takes at once, by one call (a download's piece mostly fits: no waiting,
        # none of loop.sendfile's set-up per piece), then the rest by loop.sendfile, which waits for the client
        # (or, over TLS, reads and sends)
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("ssl_object") is None \
                and transport.get_write_buffer_size() == 0:
            try:
                sent = os.sendfile(sock.fileno(), file.fileno(), offset, count)
            except BlockingIOError:  # the socket's buffer is full: wait below
                sent = 0
            except ConnectionError:
                raise
            except OSError:  # loop.sendfile tries again, and reads and sends if the kernel cannot
                sent = 0
            offset, count = offset + sent, count - sent
        if count > 0:
            await asyncio.get_running_loop().sendfile(transport, file, offset, count)

    async def _send_mapped(self, fd: int, offset: int, count: int) -> None:
        """Send the file in MAP_WINDOW windows of a read-only memory map: the kernel copies the page cache straight
        into the socket (no read into Python, no copy held). On a plain TCP connection each window goes to the
        socket directly, as much as it takes at a time, the rest as soon as it has room (:class:`_SocketWriter`);
        over TLS the transport sends what the socket takes and copies the rest, a window at most."""
        end = offset + count
        # Touching a mapping past the end of its file is a SIGBUS, not an error: the file must be as long as the
        # answer says (mmap checks each window too). regcache writes a blob once and never cuts it; a file cut
        # by hand in the state directory while it is being sent can still end the process.
        size = os.fstat(fd).st_size
        if size < end:
            raise OSError(errno.EIO, f"the file is {size} bytes, shorter than the {end} to send")
        transport = self.transport
        sock = transport.get_extra_info("socket")
        writer: _SocketWriter | None = None
        if sock is not None and transport.get_extra_info("ssl_object") is None:
            await self._drain_all()  # what the transport holds (the head) goes first
            writer = _SocketWriter(sock.fileno(), self.flow)
        try:
            position = offset
            while position < end:
                if self.flow.write_paused and not self.disconnected:
                    await self.flow.drain()
                if self.disconnected or transport.is_closing():
                    raise ConnectionResetError("the client went away")
                start = position - position % mmap.ALLOCATIONGRANULARITY
                stop = min(end, position + MAP_WINDOW)
                window = mmap.mmap(fd, stop - start, prot=mmap.PROT_READ, offset=start)
                try:
                    with memoryview(window) as whole:
                        if writer is None:  # TLS: the transport sends what the socket takes, copies the rest
                            transport.write(whole[position - start:])
                            # the pages stay in the page cache; the process no longer counts them
                            window.madvise(mmap.MADV_DONTNEED)
                        else:
                            writer.write(window, whole, position - start)
                            if self.flow.write_paused and not self.disconnected:
                                await self.flow.drain()  # the window is sent, or the client left
                            writer.check()
                finally:
                    if writer is not None:
                        writer.stop()  # nothing of the window is used once it is unmapped
                    del window  # not close(): a transport that holds part of it (3.12+ does not copy) keeps it mapped
                position = stop
        finally:
            if writer is not None:
                writer.close()

    async def _drain_all(self) -> None:
        """Wait until the transport holds nothing (not only below its low-water mark), or the client left."""
        transport = self.transport
        if not transport.get_write_buffer_size():
            return
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0)  # the protocol is paused until the buffer is empty
        try:
            if not self.disconnected:
                await self.flow.drain()
        finally:
            transport.set_write_buffer_limits(high=high, low=low)


class _H11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for request heads and the connection guard; a request it
    cannot parse gets OCI error JSON, not uvicorn's plain text."""

    def __init__(self, config: uvicorn.Config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        assert isinstance(config, _Config), "the proxy's listeners run with _Config"
        self.guard = config.guard
        self.header_timeout = config.header_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.write(_raw_response(RegistryError(
                503, "UNAVAILABLE", f"regcache is serving its maximum of {self.guard.cap} connections (setting "
                                    f"{MAX_CONNECTIONS_SETTING}); retry shortly", headers={"Retry-After": "1"})))
            transport.close()
            return
        self._await_head()

    def _await_head(self) -> None:
        """From now on the next request head must arrive within the head timeout."""
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)
        self.guard.waiting(self)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and type(self.cycle) is RequestResponseCycle:
            # a request cycle was just made and its task not yet run: it becomes one that also sends files
            # (uvicorn offers no hook to choose the class; the instance layout is the same)
            self.cycle.__class__ = _ZeroCopyCycle
            extensions = self.cycle.scope.setdefault("extensions", {})
            extensions[ABORT] = {}
            if OFFER_ZERO_COPY:
                extensions[ZERO_COPY_SEND] = {}

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle and self._head_timer is not None:  # a whole head arrived: a request runs
            self._cancel_head_timer()
            self.guard.serving(self)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # arms the keep-alive timer; may start a pipelined request
        if not self.transport.is_closing() and self.cycle is cycle:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.guard.closed(self)
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0] and self.conn.our_state is h11.IDLE:  # part of a head came: say why
            self.transport.write(_raw_response(RegistryError(
                408, "UNSUPPORTED", f"the request line and headers did not arrive within {self.header_timeout:g} s "
                                    f"(setting {HEADER_TIMEOUT_SETTING})")))
        self.guard.closed(self)
        self.transport.close()

    def shed(self) -> None:
        """Closed by the guard to make room for a new connection."""
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if len(self.conn.trailing_data[0]) > MAX_REQUEST_HEAD:
            error = RegistryError(431, "UNSUPPORTED", f"the request line and headers are over "
                                                      f"{MAX_REQUEST_HEAD // 1024} KiB; send fewer or shorter headers")
        else:
            error = RegistryError(400, "UNSUPPORTED", "regcache could not parse this HTTP/1.1 request: a malformed "
                                                      "request line or header (percent-encode bytes outside ASCII)")
        body = error.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *((name.lower().encode(), value.encode()) for name, value in API_VERSION_HEADER.items()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=error.status, headers=headers), h11.Data(data=body),
                      h11.EndOfMessage()):
            data = self.conn.send(event)
            if data:
                self.transport.write(data)
        self.transport.close()


# -- open files: every connection is one ----------------------------------------------------------

_limit_logged = False


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (logged once per process); returns the soft limit now."""
    global _limit_logged
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    raised = soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            raised = wanted
        except (OSError, ValueError) as exc:  # e.g. above the kernel's nr_open
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, wanted, exc)
    if not _limit_logged:
        _limit_logged = True
        if raised != soft:
            log.info("raised the open-files limit (each client connection is one) from %d to %d", soft, raised)
        else:
            log.info("the open-files limit is %d (each client connection is one)", soft)
    return raised if raised != resource.RLIM_INFINITY else 1 << 20


def connection_cap(max_connections: int, open_files: int) -> int:
    """``max-connections``, lowered to leave files for the database, blobs and upstream connections, and for
    the connections accepted before the guard sees them (a few batches of ACCEPT_BATCH)."""
    reserve = max(64, open_files // 8) + 3 * ACCEPT_BATCH
    return max(16, min(max_connections, open_files - reserve))


class _AcceptErrors:
    """The event loop's exception handler while the proxy listens: running out of files while accepting is one
    rate-limited warning, not a traceback per refused accept (asyncio pauses accepting for a second and the
    guard sheds meanwhile); everything else goes to the handler that was there."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous = loop.get_exception_handler()
        self._logged = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
                and str(context.get("message", "")).startswith("socket.accept()")):
            now = time.monotonic()
            if now - self._logged >= 10:
                self._logged = now
                log.warning("out of open files while accepting connections (%s); accepting again in a second",
                            exc.strerror)
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        self.loop.set_exception_handler(self)
        try:
            yield
        finally:
            self.loop.set_exception_handler(self.previous)


# -- forwarding headers: only from a proxy named with --trusted-proxy ---------------------------------

TrustedNetworks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_trusted_proxies(values: Iterable[str]) -> TrustedNetworks:
    """``127.0.0.1``, ``10.0.0.0/8,::1``: the addresses whose X-Forwarded-For/-Proto are believed."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for value in values:
        for part in value.split(","):
            text = part.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text.strip("[]"), strict=False))
            except ValueError:
                raise ListenError(f"--trusted-proxy {text[:100]!r} must be an IP address or network, e.g. "
                                  f"127.0.0.1 or 10.0.0.0/8 (the address the proxy in front connects from)") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


class ForwardedFor:
    """The client address from ``X-Forwarded-For`` (and the scheme from ``X-Forwarded-Proto``), only when the
    connection comes from a trusted proxy; otherwise any client could choose the address the event log and
    the login back-off see. The nearest address that is not a trusted proxy wins; a value that is not an IP
    address ends the walk (the proxy's own address stays). ``Forwarded`` is never read."""

    def __init__(self, app: ASGIApp, trusted: TrustedNetworks) -> None:
        self.app = app
        self.trusted = trusted

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in network for network in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and self._trusted(_address(client[0])):
            hops = ",".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for").split(",")
            found = None
            for hop in reversed([h for h in hops if h.strip()]):
                address = _address(hop)
                if address is None:
                    break
                found = address
                if not self._trusted(address):
                    break
            scope = dict(scope)
            if found is not None:
                scope["client"] = (str(found), 0)
            protos = [v.decode("latin-1").strip().lower() for k, v in scope["headers"] if k == b"x-forwarded-proto"]
            if protos and protos[-1] in ("http", "https"):
                scope["scheme"] = protos[-1]
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the owner of the loop decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


#: connections the kernel queues for accepting
LISTEN_BACKLOG = 2048
#: connections accepted per wake-up of the event loop; the connection guard sheds between two such batches
ACCEPT_BATCH = 64


class _ListeningSocket(socket.socket):
    """asyncio takes one number for the listen queue and for the accepts per wake-up: we want a long queue
    (a burst of connections waits in the kernel, not in SYN retries) and short batches (each accepted
    connection takes a file before the guard sees it)."""

    def listen(self, backlog: int = LISTEN_BACKLOG) -> None:
        super().listen(max(backlog, LISTEN_BACKLOG))


def bind(address: ListenAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio disables Nagle (TCP_NODELAY) only on sockets
    # that say they are TCP; with Nagle, a response's body waits ~40 ms for the ACK of its headers
    sock = _ListeningSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {address.port} on {address.host} is already in use; stop what listens there "
                              f"or choose another address with --listen HOST:PORT") from None
        raise ListenError(f"cannot listen on {address}: {exc.strerror}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


# -- exposure: anonymous pulls only on loopback unless asked for ------------------------------------

#: set to 1 for the same effect as --allow-anonymous (what `regcache tui --allow-anonymous` passes on)
ALLOW_ANONYMOUS_ENV = "REGCACHE_ALLOW_ANONYMOUS"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) and ``localhost``; any other name or address is not."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def allow_anonymous_from_env() -> bool:
    return os.environ.get(ALLOW_ANONYMOUS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_exposure(home: Path, address: ListenAddress, allow_anonymous: bool, metrics: bool = False) -> None:
    """Refuse a non-loopback address (of the registry, or of ``--metrics-listen``) while no client token exists,
    unless anonymous pulls are allowed."""
    if allow_anonymous or is_loopback(address.host):
        return
    from regcache.proxy.state.store import StateStore

    store = StateStore(home)
    try:
        if store.has_client_tokens():
            return
    finally:
        store.close()
    if metrics:
        raise ListenError(f"refusing to serve metrics on {address} (--metrics-listen) without client "
                          f"authentication: anyone who can reach it could read what this cache serves; create a "
                          f"token with `regcache token create -n NAME --repository PATTERN` (scrapers then send "
                          f"it as Basic auth), listen on 127.0.0.1, or pass --allow-anonymous")
    raise ListenError(f"refusing to listen on {address} without client authentication: anyone who can reach it "
                      f"could pull through this cache; create a token with `regcache token create -n NAME "
                      f"--repository PATTERN` or pass --allow-anonymous")


class ProxyServer:
    """The registry app under uvicorn, on one address, for one state directory."""

    def __init__(self, home: Path, listen: str | ListenAddress = DEFAULT_LISTEN, *,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 secrets: SecretResolver | None = None, freshness: float = 0.0, transport=None,
                 metrics_listen: str | None = None, allow_anonymous: bool | None = None,
                 trusted_proxies: Iterable[str] = ()) -> None:
        self.home = home
        self.address = listen if isinstance(listen, ListenAddress) else ListenAddress.parse(listen)
        self.metrics_address = ListenAddress.parse(metrics_listen) if metrics_listen else None
        if bool(tls_cert) != bool(tls_key):
            raise ListenError("TLS needs both --tls-cert and --tls-key")
        #: anonymous pulls beyond loopback (None: $REGCACHE_ALLOW_ANONYMOUS); see check_exposure
        self.allow_anonymous = allow_anonymous_from_env() if allow_anonymous is None else allow_anonymous
        #: the proxies whose X-Forwarded-For/-Proto are believed (none: those headers are ignored)
        self.trusted_proxies = parse_trusted_proxies(trusted_proxies)
        # exposed beyond loopback: stay closed even if every token is deleted while serving
        require_auth = not (self.allow_anonymous or is_loopback(self.address.host))
        # a loopback listener answers only loopback Host names (DNS rebinding); beyond it, tokens are required
        self.app = create_app(home, secrets=secrets, transport=transport, freshness=freshness,
                              serve_metrics=metrics_listen is None, require_auth=require_auth,
                              check_host=is_loopback(self.address.host), serves_tls=bool(tls_cert))
        #: the connections of every listener of this proxy (set when it listens)
        self.connections: ConnectionGuard | None = None
        self._tls = (tls_cert, tls_key)
        self._secrets = secrets
        self._server: _Server | None = None
        self._metrics_server: _Server | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._tls[0] else "http"
        return f"{scheme}://{self.address}"

    async def serve(self, *, task_status: TaskStatus[ListenAddress] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``stop()``; reports the bound address (its real port if 0 was asked) when ready."""
        await anyio.to_thread.run_sync(check_exposure, self.home, self.address, self.allow_anonymous)
        if self.metrics_address is not None:
            await anyio.to_thread.run_sync(check_exposure, self.home, self.metrics_address, self.allow_anonymous, True)
        await check_storage(self.home, self._secrets)  # a wrong bucket or key fails here, in one clear line
        async with self.running():
            await self.listen(task_status=task_status)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Operations]:
        """The app's engine (its lifespan: cache, downloads, event log, eviction, tag sync), no listener."""
        async with self.app.router.lifespan_context(self.app):
            yield self.app.state.operations

    async def listen(self, *, task_status: TaskStatus[ListenAddress] = anyio.TASK_STATUS_IGNORED) -> None:
        """Answer on the address until ``stop()``, inside :meth:`running`."""
        limits: ServerLimits = self.app.state.limits  # read by the engine's start (running)
        guard = self.connections = ConnectionGuard(connection_cap(limits.max_connections, raise_open_files_limit()))
        if guard.cap < limits.max_connections:
            log.info("at most %d client connections: the open-files limit leaves room for no more (setting %s: %d)",
                     guard.cap, MAX_CONNECTIONS_SETTING, limits.max_connections)

        def config(app: ASGIApp, **tls: str | None) -> _Config:
            return _Config(ForwardedFor(app, self.trusted_proxies), guard=guard, header_timeout=limits.header_timeout,
                           lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=10,
                           server_header=False, http=_H11Protocol, ws="none", proxy_headers=False,
                           timeout_keep_alive=limits.keepalive_timeout,  # a float works: call_later takes it
                           h11_max_incomplete_event_size=MAX_REQUEST_HEAD, backlog=ACCEPT_BATCH, **tls)

        sock = bind(self.address)
        self.address = ListenAddress(self.address.host, sock.getsockname()[1])
        server = _Server(config(self.app, ssl_certfile=self._tls[0], ssl_keyfile=self._tls[1]))
        self._server = server
        servers = [(server, sock)]
        try:
            if self.metrics_address is not None:
                metrics_sock = bind(self.metrics_address)
                self.metrics_address = ListenAddress(self.metrics_address.host, metrics_sock.getsockname()[1])
                exposed = not (self.allow_anonymous or is_loopback(self.metrics_address.host))
                metrics_app = create_metrics_app(self.app, require_auth=exposed,
                                                 check_host=is_loopback(self.metrics_address.host))
                self._metrics_server = _Server(config(metrics_app))
                servers.append((self._metrics_server, metrics_sock))
            with _AcceptErrors(asyncio.get_running_loop()).installed():
                async with anyio.create_task_group() as tg:
                    for each, each_sock in servers:
                        tg.start_soon(self._serve_one, each, each_sock)
                    while not all(each.started for each, _ in servers):
                        if any(each.should_exit for each, _ in servers):
                            raise self._startup_failure()
                        await anyio.sleep(0.01)
                    task_status.started(self.address)
        finally:
            for _, each_sock in servers:
                each_sock.close()

    async def _serve_one(self, server: _Server, sock: socket.socket) -> None:
        try:
            await server.serve([sock])
        except SystemExit:  # uvicorn's answer to a failed lifespan startup
            raise self._startup_failure() from None

    def _startup_failure(self) -> RegcacheError:
        return ListenError(f"the proxy on {self.address} failed to start; see the log")

    def stop(self) -> None:
        """Ask the server to finish in-flight requests and stop (safe from any thread)."""
        for server in (self._server, self._metrics_server):
            if server is not None:
                server.should_exit = True


class EmbeddedProxy:
    """A ProxyServer on its own thread and event loop (the TUI's), so transfers never stall the UI.

    The engine runs whether or not the port could be bound; ``operations`` (warm, rule test, tag sync,
    gc) run in its loop through ``call``, from any other thread.
    """

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._portal: BlockingPortal | None = None
        self._stop: anyio.Event | None = None
        self.operations: Operations | None = None
        #: why the proxy is not listening (its engine may still run), or why it stopped
        self.error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> ListenAddress:
        """Start and wait until it listens; raises ListenError (e.g. port taken) instead.

        After a ListenError the engine still runs (``engine_running``): jobs keep working.
        """
        self._thread = threading.Thread(target=self._run, name="regcache-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ListenError(f"the proxy did not start within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.server.address

    def _run(self) -> None:
        async def main() -> None:
            self._stop = anyio.Event()
            async with BlockingPortal() as portal, self.server.running() as operations:
                self._portal, self.operations = portal, operations
                try:
                    async with anyio.create_task_group() as tg:
                        try:
                            await tg.start(self.server.listen)
                        except Exception as exc:  # no listener; the engine (and the TUI's jobs) go on
                            inner = unwrap_error(exc)
                            self.error = inner if isinstance(inner, RegcacheError) else ListenError(
                                f"the proxy could not listen: {inner}")
                        self._ready.set()
                        await self._stop.wait()
                        self.server.stop()  # the listener finishes in-flight requests
                finally:
                    self._portal = None
                    await portal.stop(cancel_remaining=True)  # a running job does not hold up quitting

        try:
            anyio.run(main)
        except BaseException as exc:  # reported to start(), or kept for whoever asks
            exc = unwrap_error(exc)
            self.error = exc if isinstance(exc, RegcacheError) else ListenError(f"the proxy stopped: {exc}")
            if not isinstance(exc, RegcacheError):
                log.exception("the embedded proxy stopped")
        finally:
            self._portal = None
            self._ready.set()

    def call(self, fn: Callable[[Operations], Awaitable[T]]) -> T:
        """Run ``fn(operations)`` in the proxy's event loop and wait for it (call from another thread)."""
        portal, operations = self._portal, self.operations
        if portal is None or operations is None:
            raise ListenError(f"the proxy's engine is not running: {self.error or 'it has not started'}")
        return portal.call(fn, operations)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def engine_running(self) -> bool:
        """Whether jobs can run: the engine's loop is up, with or without a listener."""
        return self.running and self._portal is not None

    def stop(self, timeout: float = 15.0) -> None:
        portal, stop = self._portal, self._stop
        if portal is not None and stop is not None:
            try:
                portal.call(stop.set)
            except RuntimeError:  # the loop is already finishing
                pass
        self.server.stop()
        if self._thread is not None:
            self._thread.join(timeout)
