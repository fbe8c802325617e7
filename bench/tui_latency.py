"""TUI responsiveness while 16 clients stream a large blob through its embedded proxy.

Runs the real `regcache tui` under tmux (80x24); 16 curl clients (``--clients``) each pull a 300 MB
blob through its embedded proxy from a loopback docker-registry, again and again (the first
transfers are one cold pull-through that they share, the following ones cache hits), and
meanwhile it measures the time from a key press (switching blades) to the screen showing the new
blade, polling `tmux capture-pane`. Every transfer must be HTTP 200 with the whole blob; the ones
still running when the measurement ends are stopped and not counted.

Run from the repository root: python bench/tui_latency.py [--size-mb 300] [--clients 16] [--presses 100]
Target (issue 17): key press to screen update p95 under 100 ms while the 16 clients stream.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.registries.client import push_image  # noqa: E402
from tests.registries.images import build_image  # noqa: E402
from tests.registries.server import RegistryServer, free_port  # noqa: E402

#: the right border of the blade list, left of the shown blade (its width follows the longest name)
NAV_BORDER = "\u2595"
BLADES = (("2", "Cache rules"), ("3", "Credentials"), ("5", "Upstreams"), ("1", "Overview"))


def regcache() -> str:
    return shutil.which("regcache") or str(Path(sys.executable).parent / "regcache")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def blade_title(session: str) -> str:
    """The title line of the shown blade (row 2 of the screen, right of the navigation's border)."""
    lines = tmux("capture-pane", "-p", "-t", session).splitlines()
    return lines[1].partition(NAV_BORDER)[2].strip() if len(lines) > 1 else ""


def press_and_time(session: str, key: str, title: str, timeout: float = 5.0) -> float:
    start = time.perf_counter()
    tmux("send-keys", "-t", session, key)
    while time.perf_counter() - start < timeout:
        if blade_title(session).startswith(title):
            return time.perf_counter() - start
        time.sleep(0.002)
    raise RuntimeError(f"the {title} blade did not appear within {timeout} s")


def measure(session: str, presses: int) -> dict[str, list[float]]:
    """Seconds from key press to screen, by blade shown."""
    samples: dict[str, list[float]] = {title: [] for _, title in BLADES}
    for i in range(presses):
        key, title = BLADES[i % len(BLADES)]
        samples[title].append(press_and_time(session, key, title))
        time.sleep(0.05)
    return samples


def by_blade(samples: dict[str, list[float]]) -> str:
    """Each blade's median and slowest switch: which one makes the tail."""
    return "   ".join(f"{title} {statistics.median(times) * 1000:.0f}/{max(times) * 1000:.0f}"
                       for title, times in samples.items() if times)


def summary(by_title: dict[str, list[float]]) -> str:
    ms = sorted(s * 1000 for samples in by_title.values() for s in samples)
    p95 = ms[max(int(len(ms) * 0.95) - 1, 0)]
    return f"median {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   max {ms[-1]:6.1f} ms   (n={len(ms)})"


@dataclass(frozen=True)
class Transfer:
    """One finished curl GET of the blob."""

    client: int
    status: str
    size: int
    seconds: float


class Streamers:
    """``clients`` threads, each running curl GETs of ``url`` back to back until :meth:`stop`."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.transfers: list[Transfer] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen[str]] = {}
        self._threads = [threading.Thread(target=self._stream, args=(i,), name=f"streamer-{i}")
                         for i in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def all_started(self) -> bool:
        """Whether every client has a transfer running or done."""
        with self._lock:
            done = {t.client for t in self.transfers}
            return len(done | set(self._running)) == len(self._threads)

    def stop(self) -> None:
        """End the clients: transfers in progress are cut off (and not recorded)."""
        self._stopping.set()
        with self._lock:
            for process in self._running.values():
                process.terminate()
        for thread in self._threads:
            thread.join()

    def _stream(self, client: int) -> None:
        command = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", self.url]
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.DEVNULL, text=True)
                self._running[client] = process
            out, _ = process.communicate()
            with self._lock:
                del self._running[client]
                if self._stopping.is_set():
                    return  # cut off by stop(): not a whole transfer
                status, size, seconds = (out.split() + ["", "0", "0"])[:3]
                self.transfers.append(Transfer(client, status, int(size), float(seconds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16, help="concurrent streaming clients (default 16)")
    parser.add_argument("--presses", type=int, default=100,
                        help="blade switches per phase (default 100: long enough to take in cache hits, not only "
                             "the shared cold pull)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="regcache-tui-bench-"))
    home = work / "home"
    upstream = RegistryServer.anonymous(work / "upstream")
    session = f"regcache-bench-{os.getpid()}"
    try:
        upstream.start()
        image = build_image([args.size_mb * 1024 * 1024], seed="tui-bench")
        push_image(image, upstream, "library/big", "1")
        env = {**os.environ, "REGCACHE_HOME": str(home)}
        for command in (["upstream", "add", "--login-server", upstream.host, "--url", upstream.url, "--auth",
                         "anonymous"],
                        ["cache", "create", "-n", "bench-big", "-s", f"{upstream.host}/library/big", "-t", "big"]):
            subprocess.run([regcache(), *command], env=env, check=True, capture_output=True)
        port = free_port()
        tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24",
             f"env REGCACHE_HOME={home} TERM=xterm-256color {regcache()} tui --listen 127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while "running" not in tmux("capture-pane", "-p", "-t", session):
            if time.monotonic() > deadline:
                raise RuntimeError("the TUI did not start:\n" + tmux("capture-pane", "-p", "-t", session))
            time.sleep(0.1)

        idle = measure(session, args.presses)
        layer = image.layers[0]
        url = f"http://127.0.0.1:{port}/v2/big/blobs/{layer.digest}"
        # Keep the proxy streaming to every client for the whole measurement: the first transfers
        # are the cold pull-through, the following ones are served from the cache.
        streamers = Streamers(url, args.clients)
        streamers.start()
        try:
            deadline = time.monotonic() + 30
            while not streamers.all_started():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {args.clients} streaming clients did not all start")
                time.sleep(0.05)
            time.sleep(0.3)
            busy = measure(session, args.presses)
        finally:
            streamers.stop()
        failed = [t for t in streamers.transfers if t.status != "200" or t.size != layer.size]
        print(f"key press -> screen update, idle:              {summary(idle)}")
        print(f"key press -> screen update, {args.clients} clients streaming {args.size_mb} MB: {summary(busy)}"
              f"   (target p95 < 100 ms)")
        print(f"  by blade, median/max ms: idle: {by_blade(idle)}")
        print(f"                           busy: {by_blade(busy)}")
        done = streamers.transfers
        print(f"  {len(done)} whole transfers during the measurement ({len(failed)} failed), "
              f"{sum(t.size for t in done) / 1e6:.0f} MB in all")
        first_of: dict[int, Transfer] = {}
        hits: list[Transfer] = []
        for transfer in done:  # in the order they ended: a client's first is its cold one
            if transfer.client in first_of:
                hits.append(transfer)
            else:
                first_of[transfer.client] = transfer
        if first_of:
            print(f"  first transfers (one cold pull-through, shared): {len(first_of)}, "
                  f"median {statistics.median(t.seconds for t in first_of.values()):.1f} s")
        if hits:
            print(f"  later transfers (cache hits): {len(hits)}, "
                  f"median {statistics.median(t.seconds for t in hits):.1f} s")
        if failed:
            raise RuntimeError(f"{len(failed)} transfers did not get the whole blob: {failed[:5]}")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
