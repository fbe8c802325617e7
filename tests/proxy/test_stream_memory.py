"""Memory per streaming client is bounded (a security property: clients are not trusted to read fast).

32 clients that read slowly hold their transfers open against a real `regcache serve`; its resident memory
may grow by a couple of pieces (download.STREAM_CHUNK) per client, whatever the size of the blob or the
client's speed, and by part of a window's pages for a warm file sent from its map (server._SocketWriter). The
ceilings are wide margins: measured here, ~8 MB from the map (~26 MB when the transport copied what the socket
did not take, a window each), ~60 MB by 1 MiB reads, ~15 MB in flight; the 4 MiB reads before grew ~260 MB.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from regcache.proxy.config.control import ControlPlane

pytestmark = pytest.mark.slow

READERS = 32
BLOB = 64 * 1024 * 1024
#: what each slow client takes per second (its socket's receive buffer is small too)
RATE = 512 * 1024
#: RSS growth allowed for all of them: ~2 MiB each is the design, 200 MB the ceiling asserted
CEILING_MB = 200
#: the same from a warm file's map: the pages of a quarter of a window (_SocketWriter.RELEASE_EVERY) each is the design
MAPPED_CEILING_MB = 16


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class SlowReaders:
    """``count`` connections asking for ``path``, each read at ``rate`` bytes/s by one thread; closed by ``close``."""

    def __init__(self, host: str, path: str, count: int, rate: int) -> None:
        address, port = host.rsplit(":", 1)
        self.socks: list[socket.socket] = []
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.connect((address, int(port)))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            sock.setblocking(False)
            self.socks.append(sock)
        self.received = [0] * count
        self.rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        tick = 0.02
        while not self._stop.wait(tick):
            for i, sock in enumerate(self.socks):
                try:
                    self.received[i] += len(sock.recv(int(self.rate * tick)))
                except BlockingIOError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


def peak_growth(pid: int, readers: SlowReaders, seconds: float) -> tuple[float, float]:
    """(RSS before, peak RSS growth) of ``pid`` while ``readers`` read for ``seconds``."""
    before = rss_mb(pid)
    peak = before
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_mb(pid))
        time.sleep(0.05)
    return before, peak - before


def assert_slow_readers_cost_bounded(host: str, pid: int, path: str, seconds: float,
                                    ceiling_mb: float = CEILING_MB) -> None:
    """READERS clients reading ``path`` at RATE from the server ``pid`` at ``host`` for ``seconds``: each is
    served, and the server's peak RSS grows by less than ``ceiling_mb``."""
    readers = SlowReaders(host, path, READERS, RATE)
    try:
        before, grown = peak_growth(pid, readers, seconds)
        assert min(readers.received) > 0, "every slow client is being served"
    finally:
        readers.close()
    assert grown < ceiling_mb, f"{READERS} slow readers grew regcache from {before:.0f} MB by {grown:.0f} MB"


@pytest.mark.parametrize("kernel", [True, False], ids=["zero-copy", "reads"])
def test_slow_readers_of_a_warm_blob_cost_a_bounded_window_each(home, keyring_env, anonymous_registry, push_image,
                                                               kernel):
    """From the file's map (the zero-copy send, server.FILE_SEND), and by 1 MiB reads (as for a server that does
    not offer zero-copy sends): `regcache serve` with its switch set either way."""
    import httpx

    from tests.helpers.commands import ServeProcess

    control = ControlPlane.open(home)
    control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
    control.create_rule("big-rule", f"{anonymous_registry.host}/team/*", "team/*")
    control.close()
    layer = push_image(anonymous_registry, "team/big", "1", layers=[BLOB]).layers[0]
    process = ServeProcess(home, "--listen", "127.0.0.1:0", env=keyring_env,
                           prelude=f"import regcache.proxy.server\nregcache.proxy.server.OFFER_ZERO_COPY = {kernel}")
    try:
        path = f"/v2/team/big/blobs/{layer.digest}"
        with httpx.Client(base_url=process.url, timeout=60) as http:  # cold: now stored, then read once warm
            assert len(http.get(path).content) == layer.size
            assert len(http.get(path).content) == layer.size
        time.sleep(0.5)
        assert_slow_readers_cost_bounded(process.host, process.proc.pid, path, 4.0,
                                         MAPPED_CEILING_MB if kernel else CEILING_MB)
        with httpx.Client(base_url=process.url, timeout=60) as http:  # it goes on after they all left
            assert http.get(path).content == layer.data
    finally:
        process.proc.kill()
        process.proc.wait()


def test_slow_readers_of_a_download_in_flight_cost_a_bounded_window_each(home, serve, keyring_env):
    from tests.helpers.hostile_upstream import HostileUpstream

    upstream = HostileUpstream().start()
    try:
        upstream.blob_size, upstream.chunk, upstream.delay = BLOB, 1024 * 1024, 0.02  # ~50 MB/s, never verifies
        control = ControlPlane.open(home)
        control.add_upstream(upstream.host, upstream.url, "anonymous")
        control.create_rule("evil-all", f"{upstream.host}/evil/*", "evil/*")
        control.close()
        process = serve()
        assert_slow_readers_cost_bounded(process.host, process.proc.pid, f"/v2/evil/big/blobs/sha256:{'ab' * 32}",
                                         2.0)
    finally:
        upstream.stop()
