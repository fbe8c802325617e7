"""Running the registry app: as the main loop of `regcache serve`, or embedded on its own thread.

``ProxyServer.serve`` binds the socket before it reports readiness through ``task_status``, so a
port that is taken is an error for the caller, not a log line. The app's engine (cache, downloads,
event log, background jobs) runs apart from its listener (:meth:`ProxyServer.running`): the TUI's
embedded proxy keeps it, and the jobs the TUI starts in it, when its port cannot be bound.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import h11
import uvicorn
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal
from uvicorn.protocols.http.h11_impl import H11Protocol

from regcache.proxy.core.errors import RegcacheError, unwrap_error
from regcache.proxy.http.errors import API_VERSION_HEADER, RegistryError
from regcache.proxy.http.registry import check_storage, create_app, create_metrics_app
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


class _H11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol; a request it cannot parse gets OCI error JSON, not uvicorn's plain text."""

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


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the owner of the loop decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(address: ListenAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio disables Nagle (TCP_NODELAY) only on sockets
    # that say they are TCP; with Nagle, a response's body waits ~40 ms for the ACK of its headers
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {address.port} on {address.host} is already in use; stop what listens there "
                              f"or choose another address with --listen HOST:PORT") from None
        raise ListenError(f"cannot listen on {address}: {exc.strerror}") from None
    sock.listen(2048)
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


def check_exposure(home: Path, address: ListenAddress, allow_anonymous: bool) -> None:
    """Refuse a non-loopback address while no client token exists, unless anonymous pulls are allowed."""
    if allow_anonymous or is_loopback(address.host):
        return
    from regcache.proxy.state.store import StateStore

    store = StateStore(home)
    try:
        if store.has_client_tokens():
            return
    finally:
        store.close()
    raise ListenError(f"refusing to listen on {address} without client authentication: anyone who can reach it "
                      f"could pull through this cache; create a token with `regcache token create -n NAME "
                      f"--repository PATTERN` or pass --allow-anonymous")


class ProxyServer:
    """The registry app under uvicorn, on one address, for one state directory."""

    def __init__(self, home: Path, listen: str | ListenAddress = DEFAULT_LISTEN, *,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 secrets: SecretResolver | None = None, freshness: float = 0.0, transport=None,
                 metrics_listen: str | None = None, allow_anonymous: bool | None = None) -> None:
        self.home = home
        self.address = listen if isinstance(listen, ListenAddress) else ListenAddress.parse(listen)
        self.metrics_address = ListenAddress.parse(metrics_listen) if metrics_listen else None
        if bool(tls_cert) != bool(tls_key):
            raise ListenError("TLS needs both --tls-cert and --tls-key")
        #: anonymous pulls beyond loopback (None: $REGCACHE_ALLOW_ANONYMOUS); see check_exposure
        self.allow_anonymous = allow_anonymous_from_env() if allow_anonymous is None else allow_anonymous
        # exposed beyond loopback: stay closed even if every token is deleted while serving
        require_auth = not (self.allow_anonymous or is_loopback(self.address.host))
        self.app = create_app(home, secrets=secrets, transport=transport, freshness=freshness,
                              serve_metrics=metrics_listen is None, require_auth=require_auth)
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
        sock = bind(self.address)
        self.address = ListenAddress(self.address.host, sock.getsockname()[1])
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False,
                                ssl_certfile=self._tls[0], ssl_keyfile=self._tls[1],
                                timeout_graceful_shutdown=10, server_header=False,
                                http=_H11Protocol, h11_max_incomplete_event_size=MAX_REQUEST_HEAD)
        server = _Server(config)
        self._server = server
        servers = [(server, sock)]
        try:
            if self.metrics_address is not None:
                metrics_sock = bind(self.metrics_address)
                self.metrics_address = ListenAddress(self.metrics_address.host, metrics_sock.getsockname()[1])
                self._metrics_server = _Server(uvicorn.Config(create_metrics_app(self.app), lifespan="off",
                                                              log_config=None, access_log=False,
                                                              server_header=False))
                servers.append((self._metrics_server, metrics_sock))
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
