"""Fixtures for the proxy's integration tests: regcache serving on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.server import EmbeddedProxy, ProxyServer


@dataclass
class Regcache:
    """A running regcache (the real uvicorn server, on its own thread) and its control plane."""

    home: Path
    server: ProxyServer
    proxy: EmbeddedProxy
    control: ControlPlane

    @property
    def host(self) -> str:
        return str(self.server.address)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def add_upstream(self, registry, auth: str = "both") -> str:
        """Register a loopback registry as a custom upstream; returns its login server."""
        self.control.add_upstream(registry.host, registry.url, auth)
        return registry.host

    def events(self) -> list[dict]:
        """Pull events written so far (waits for the batch writer to catch up)."""
        import time

        deadline = time.monotonic() + 5
        seen = -1
        while time.monotonic() < deadline:
            rows = self.control.store.events()
            if len(rows) == seen:
                return rows
            seen = len(rows)
            time.sleep(0.2)
        return self.control.store.events()

    def blob_files(self) -> list[Path]:
        root = self.home / "blobs"
        return [p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts]

    def settle(self, timeout: float = 15) -> None:
        """Wait until every download has ended: a client has a blob once it verified, and the store keeps it
        (fsync, rename, row) moments later. Call it before looking at what is stored."""
        import time

        blobs = self.server.app.state.registry.cache.blobs
        deadline = time.monotonic() + timeout
        while blobs.active:
            assert time.monotonic() < deadline, f"{blobs.active} downloads still running after {timeout:.0f} s"
            time.sleep(0.01)

    def temp_files(self) -> list[Path]:
        return [p for p in (self.home / "blobs" / "tmp").iterdir()]


def start_regcache(home: Path, **kwargs) -> Regcache:
    server = ProxyServer(home, "127.0.0.1:0", **kwargs)
    proxy = EmbeddedProxy(server)
    proxy.start()
    return Regcache(home, server, proxy, ControlPlane.open(home))


@pytest.fixture
def regcache(home: Path, keyring_env) -> Iterator[Regcache]:
    rc = start_regcache(home)
    yield rc
    rc.proxy.stop()
    rc.control.close()


@pytest.fixture
def serve(home: Path, keyring_env) -> Iterator:
    """Start `regcache serve` on ``home`` (default 127.0.0.1:0) with extra arguments; all are killed after."""
    from tests.helpers.commands import ServeProcess

    started: list[ServeProcess] = []

    def start(*args: str, listen: str = "127.0.0.1:0") -> ServeProcess:
        process = ServeProcess(home, "--listen", listen, *args, env=keyring_env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


@pytest.fixture
def hostile(regcache):
    """A hostile upstream (tests/helpers/hostile_upstream.py) behind the rule ``evil/*``, anonymous."""
    from tests.helpers.hostile_upstream import HostileUpstream

    upstream = HostileUpstream().start()
    regcache.control.add_upstream(upstream.host, upstream.url, "anonymous")
    regcache.control.create_rule("evil-all", f"{upstream.host}/evil/*", "evil/*")
    yield upstream
    upstream.stop()


@dataclass
class TakenBodies:
    """What the blob store asked of each upstream blob answer (UpstreamBlob.receive): whether the body was taken
    (hashed and written on its connection's thread), and the names of the threads its bytes were handed on."""

    taken: dict[str, bool]
    threads: dict[str, set[str]]


@pytest.fixture
def taken_bodies(monkeypatch) -> TakenBodies:
    import threading

    from regcache.proxy.upstream.client import UpstreamBlob

    record = TakenBodies({}, {})
    receive = UpstreamBlob.receive

    def recorded(self: UpstreamBlob, consume):
        threads = record.threads.setdefault(self.digest, set())

        def noted(view: memoryview) -> None:
            threads.add(threading.current_thread().name)
            consume(view)

        received = receive(self, noted)
        record.taken[self.digest] = received is not None
        return received

    monkeypatch.setattr(UpstreamBlob, "receive", recorded)
    return record
