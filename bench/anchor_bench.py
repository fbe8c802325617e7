"""Anchor benchmark: regcache side by side with the distribution registry's proxy mode (the "anchor").

One anonymous upstream ``docker-registry`` on 127.0.0.1 holds two images: a multi-layer one
(``--blob-mb``, half and a quarter of it: 200 + 100 + 50 MB by default; random bytes, gzip level 0)
and a small one whose only layer blob is about 4 KiB. In front of it run, as in
``bench/pull_bench.py`` (whose servers and helpers this reuses):

* the anchor: a second ``docker-registry`` with ``proxy: remoteurl: <upstream>``;
* regcache: ``regcache --home DIR serve`` with one rule ``* => <upstream>/*``.

Measured for both, in this order, printed with regcache / anchor as the ratio and the issue's
target, then as one JSON line (the last line of standard output):

1. ``--pulls`` concurrent ``skopeo copy`` of the multi-layer image with a fresh state directory
   (cold), then the same again (warm): wall seconds, and cold / warm; ``--rounds`` times (the two
   servers alternating who goes first), printed as medians (cold / warm is the median of the rounds'
   ratios): one round's walls move by 5-10 % here, as much as the target's margin; with the CPU seconds
   the server and the ``skopeo`` clients used in each phase (medians), which say where a cold round's
   extra time went: the server's own download, or the clients' kernel time for the same bytes;
2. peak RSS of the server process while each of ``--readers`` (16 and 64) ``curl`` clients reads the
   warm largest layer at once: the server is restarted first (its storage kept), so the figure is
   that phase's own; VmHWM is reset through /proc/PID/clear_refs, and VmRSS is sampled every 50 ms;
3. one warm largest-layer blob with ``curl`` to /dev/null, MB/s, best of ``--repeat``; and the same curl
   from a bare server (a thread of this process answering every request with the blob by blocking
   ``os.sendfile``: no event loop, nothing per chunk): what this client takes over loopback from a
   server that does nothing else;
4. requests/s and p50 / p99 latency with ``wrk`` (``--connections`` 64, ``--threads`` 2,
   ``--duration`` 10 s, ``--latency``) of the small image's manifest by digest and of its ~4 KiB
   layer blob. A run with any non-2xx answer or socket error is an error, not a figure.

"Warm" means the cache holds the content: every warm figure follows the pulls of step 1 and a
fetch of the small image through each cache.

Run from the repository root with the dev venv (``docker-registry``, ``skopeo``, ``curl`` and ``wrk``
must be installed: ``apt-get install -y docker-registry skopeo curl wrk``; without one it says so
and exits 0)::

    .venv/bin/python bench/anchor_bench.py                      # the issue's figures, ~6 minutes
    .venv/bin/python bench/anchor_bench.py --blob-mb 20 --duration 2 --readers 4,8 --pulls 4 --rounds 1 --repeat 1
                                                                # a smoke run, under a minute

Sizes are decimal: 1 MB = 10**6 bytes. Every process it starts is stopped and its temporary
directory removed on exit, also on failure, Ctrl-C or SIGTERM. Figures on a shared 2-core
machine move from run to run: compare the two servers within one run, on an idle machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import cast

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `tests` and `bench` are not installed; both import from the root
    sys.path.insert(0, str(REPO_ROOT))

from bench.pull_bench import (  # noqa: E402
    MB,
    REPOSITORY,
    START_TIMEOUT,
    TAG,
    AnchorRegistry,
    Bench,
    BenchError,
    RegcacheServer,
    RssMonitor,
    curl_throughput,
    exit_on_signal,
    git_revision,
    machine_busy,
    progress,
    pull_timeout,
    start_side_by_side,
    stop_all,
)
from bench.pull_bench import _status_kb as status_kb  # noqa: E402 - one reader of /proc/PID/status
from tests.registries.client import push_image  # noqa: E402
from tests.registries.images import Image, build_image  # noqa: E402
from tests.registries.server import RegistryServer, registry_binary  # noqa: E402
from tests.registries.skopeo import skopeo_binary  # noqa: E402

SMALL_REPOSITORY = "bench/small"
#: the small image's layer payload: with tar and gzip framing its blob is 4,119 bytes, about 4 KiB
SMALL_PAYLOAD = 2560
ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
SAMPLE_INTERVAL = 0.05
WRK_GRACE = 30.0

# The targets (issue 17, "It must show"), for the status column and the JSON.
RSS_TARGETS_MB = {16: 150.0, 64: 250.0}
BLOB_TARGET = 1.3  # regcache MB/s >= 1.3x the anchor's
RPS_TARGET = 2.0  # regcache requests/s >= 2x the anchor's, with a lower p99
COLD_WARM_TARGET = 1.1  # regcache's concurrent cold wall <= 1.1x its warm wall

Server = AnchorRegistry | RegcacheServer


# -- what is needed ------------------------------------------------------------------------------


def missing_tools() -> list[str]:
    """The tools the bench needs that are not installed, each with why (empty if all are there)."""
    missing = []
    for check in (registry_binary, skopeo_binary):
        try:
            check()
        except FileNotFoundError as exc:
            missing.append(str(exc))
    for tool in ("curl", "wrk"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} is not installed: run `apt-get install -y {tool}`")
    return missing


# -- peak RSS of one phase -----------------------------------------------------------------------


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PhasePeak:
    """The peak RSS of one process over a ``with`` block: VmHWM reset at the start, VmRSS sampled every
    50 ms, VmHWM read at the end (the sampling alone can miss a short peak; the HWM cannot)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.idle_kb = status_kb(pid, "VmRSS")
        self.peak_kb = self.idle_kb
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="phase-rss", daemon=True)

    def __enter__(self) -> PhasePeak:
        self.hwm_reset = reset_peak(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.hwm_reset:
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmHWM"))

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))

    @property
    def idle_mb(self) -> float:
        return self.idle_kb * 1024 / MB

    @property
    def peak_mb(self) -> float:
        return self.peak_kb * 1024 / MB


# -- clients -------------------------------------------------------------------------------------


def http_get(host: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET on a new connection: status and body."""
    address, port = host.rsplit(":", 1)
    connection = http.client.HTTPConnection(address, int(port), timeout=60.0)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def fetch_small(host: str, image: Image) -> None:
    """Pull the small image through ``host`` like a client (manifest by tag, by digest, its blobs); check it."""
    accept = {"Accept": ACCEPT}
    for reference in (TAG, image.digest):
        status, body = http_get(host, f"/v2/{SMALL_REPOSITORY}/manifests/{reference}", accept)
        if status != 200 or body != image.manifest:
            raise BenchError(f"GET {host} {SMALL_REPOSITORY} manifest {reference}: HTTP {status}, "
                             f"{len(body)} bytes, not the pushed manifest")
    for digest, blob in image.blobs.items():
        status, body = http_get(host, f"/v2/{SMALL_REPOSITORY}/blobs/{digest}")
        if status != 200 or body != blob.data:
            raise BenchError(f"GET {host} {SMALL_REPOSITORY} blob {digest}: HTTP {status}, {len(body)} bytes")


def concurrent_readers(host: str, digest: str, size: int, readers: int, timeout: float,
                       rate: str | None) -> float:
    """``readers`` curl clients GET one blob at once, bodies discarded; wall seconds until all end.

    Each must get HTTP 200 and exactly ``size`` bytes.
    """
    url = f"http://{host}/v2/{REPOSITORY}/blobs/{digest}"
    command = ["curl", "-s", "-o", "/dev/null", "--max-time", str(int(timeout)),
               "-w", "%{http_code} %{size_download}", *(["--limit-rate", rate] if rate else []), url]
    started = time.perf_counter()
    processes = [subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(readers)]
    try:
        outputs = [process.communicate(timeout=timeout + 5) for process in processes]
    except subprocess.TimeoutExpired:
        raise BenchError(f"{readers} readers of {url} did not finish within {timeout:.0f} s") from None
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    elapsed = time.perf_counter() - started
    for process, (out, err) in zip(processes, outputs):
        if process.returncode != 0 or out.split() != ["200", str(size)]:
            raise BenchError(f"a reader of {url} failed (curl exit {process.returncode}): {out!r} {err.strip()!r}")
    return elapsed


# -- wrk -----------------------------------------------------------------------------------------


_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([0-9.]+)(us|ms|s|m|h)"


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run printed."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output; BenchError if a line it always prints is missing."""

    def find(pattern: str, what: str) -> re.Match[str]:
        match = re.search(pattern, output, re.M)
        if match is None:
            raise BenchError(f"wrk printed no {what}:\n{output}")
        return match

    def latency(percent: int) -> float:
        match = find(rf"^\s*{percent}%\s+{_TIME}\s*$", f"{percent}% latency (was --latency given?)")
        return float(match[1]) * _TIME_UNITS_MS[match[2]]

    non_2xx = re.search(r"^\s*Non-2xx or 3xx responses:\s*(\d+)", output, re.M)
    errors = re.search(r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output, re.M)
    return WrkResult(
        requests_per_s=float(find(r"^Requests/sec:\s*([0-9.]+)", "Requests/sec")[1]),
        p50_ms=latency(50),
        p99_ms=latency(99),
        requests=int(find(r"^\s*(\d+) requests in", "request count")[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_wrk(url: str, connections: int, threads: int, duration: float, headers: dict[str, str]) -> WrkResult:
    """``wrk --latency`` against ``url``; BenchError on any failed request (a fast 404 is not a figure)."""
    command = ["wrk", "--latency", "-c", str(connections), "-t", str(threads), "-d", f"{duration:g}s",
               "--timeout", "10s", *(arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")),
               url]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True,
                                timeout=duration + WRK_GRACE, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk against {url} did not end within {duration + WRK_GRACE:.0f} s") from None
    if result.returncode != 0:
        raise BenchError(f"wrk against {url} exited {result.returncode}: {result.stderr.strip() or result.stdout}")
    figures = parse_wrk(result.stdout)
    if figures.non_2xx or figures.socket_errors or figures.requests == 0:
        raise BenchError(f"wrk against {url}: {figures.non_2xx} non-2xx answers, {figures.socket_errors} "
                         f"socket errors in {figures.requests} requests:\n{result.stdout}")
    return figures


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Figures:
    """Everything measured for one server."""

    cold_pulls_s: list[float] = field(default_factory=list)
    warm_pulls_s: list[float] = field(default_factory=list)
    #: CPU seconds per phase of the server process, and of the skopeo clients (user + system)
    cold_server_cpu_s: list[float] = field(default_factory=list)
    warm_server_cpu_s: list[float] = field(default_factory=list)
    cold_clients_cpu_s: list[float] = field(default_factory=list)
    warm_clients_cpu_s: list[float] = field(default_factory=list)
    idle_rss_mb: dict[int, float] = field(default_factory=dict)
    peak_rss_mb: dict[int, float] = field(default_factory=dict)
    hwm_reset: bool = True
    blob_mbps: list[float] = field(default_factory=list)
    wrk: dict[str, WrkResult] = field(default_factory=dict)


class BareSendfileServer:
    """The client's ceiling: every request on 127.0.0.1 is answered with ``path`` by blocking ``os.sendfile``."""

    def __init__(self, path: Path) -> None:
        self.path, self.size = path, path.stat().st_size
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, name="bare-sendfile", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\nContent-Type: application/octet-stream\r\n"
                f"Connection: close\r\n\r\n").encode()
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed: the bench is over
                return
            with connection, open(self.path, "rb") as file:
                connection.recv(65536)
                connection.sendall(head)
                sent = 0
                while sent < self.size:
                    sent += os.sendfile(connection.fileno(), file.fileno(), sent, self.size - sent)

    def close(self) -> None:
        self._socket.close()


def client_ceiling(path: Path, digest: str, repeat: int, timeout: float) -> float:
    """Best MB/s of ``repeat`` curl GETs of ``path`` from a :class:`BareSendfileServer`."""
    server = BareSendfileServer(path)
    try:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # in the page cache, as warm
        return max(curl_throughput(server.host, digest, server.size, timeout) for _ in range(repeat))
    finally:
        server.close()


#: the wrk runs: name -> what it asks for (a function of the small image)
WRK_KINDS: dict[str, tuple[str, Callable[[Image], str]]] = {
    "manifest": ("manifest by digest", lambda image: f"/v2/{SMALL_REPOSITORY}/manifests/{image.digest}"),
    "blob4k": ("~4 KiB blob", lambda image: f"/v2/{SMALL_REPOSITORY}/blobs/{image.layers[0].digest}"),
}


@dataclass
class AnchorBench:
    """The servers, the images and the settings of one run."""

    bench: Bench  # pull_bench's: scratch space, resets and timed skopeo pulls of the big image
    servers: list[Server]
    small: Image
    args: argparse.Namespace

    @property
    def largest(self) -> tuple[str, int]:
        layer = max(self.bench.image.layers, key=lambda layer: layer.size)
        return layer.digest, layer.size

    def order(self, i: int) -> list[Server]:
        """Alternate who goes first, so neither server always measures second."""
        return self.servers if i % 2 == 0 else self.servers[::-1]

    def run(self) -> dict[str, Figures]:
        figures = {server.name: Figures() for server in self.servers}
        pulls = self.args.pulls
        for i in range(self.args.rounds):
            for server in self.order(i):
                self.bench.reset(server)  # a fresh, empty state directory
                mine = figures[server.name]
                for walls, server_cpu, clients_cpu in (
                        (mine.cold_pulls_s, mine.cold_server_cpu_s, mine.cold_clients_cpu_s),
                        (mine.warm_pulls_s, mine.warm_server_cpu_s, mine.warm_clients_cpu_s)):
                    before = children_cpu_seconds()
                    wall, cpu = self.bench.pulls(server, pulls)
                    walls.append(wall)
                    server_cpu.append(cpu)
                    clients_cpu.append(children_cpu_seconds() - before)
                progress(f"{pulls} concurrent pulls via {server.name}, round {i + 1}/{self.args.rounds}: cold "
                         f"{mine.cold_pulls_s[-1]:.2f} s, warm {mine.warm_pulls_s[-1]:.2f} s")
        for server in self.servers:
            fetch_small(server.host, self.small)
        digest, size = self.largest
        timeout = pull_timeout(self.args.blob_mb, max(self.args.readers))
        for i, readers in enumerate(self.args.readers):
            for server in self.order(i):
                restart(server)
                pid = server.pid
                if pid is None:
                    raise BenchError(f"{server.name} is not running after a restart")
                concurrent_readers(server.host, digest, size, 1, timeout, None)  # warms the process up
                with PhasePeak(pid) as peak:
                    wall = concurrent_readers(server.host, digest, size, readers, timeout, self.args.reader_rate)
                mine = figures[server.name]
                mine.idle_rss_mb[readers], mine.peak_rss_mb[readers] = peak.idle_mb, peak.peak_mb
                mine.hwm_reset = mine.hwm_reset and peak.hwm_reset
                progress(f"{readers} readers via {server.name}: peak RSS {peak.peak_mb:.0f} MB "
                         f"(idle {peak.idle_mb:.0f} MB), {readers * size / MB / wall:.0f} MB/s in all")
        for i in range(self.args.repeat):
            for server in self.order(i):
                mbps = curl_throughput(server.host, digest, size, pull_timeout(self.args.blob_mb, 1))
                figures[server.name].blob_mbps.append(mbps)
                progress(f"warm blob {i + 1}/{self.args.repeat} via {server.name}: {mbps:.0f} MB/s")
        for i, (kind, (label, path)) in enumerate(WRK_KINDS.items()):
            for server in self.order(i):
                result = run_wrk(f"http://{server.host}{path(self.small)}", self.args.connections,
                                 self.args.threads, self.args.duration, {"Accept": ACCEPT})
                figures[server.name].wrk[kind] = result
                progress(f"wrk {label} via {server.name}: {result.requests_per_s:.0f} req/s, "
                         f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
        return figures


def children_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's waited-for children: during a phase of pulls, the skopeo
    clients it ran (the servers are reaped only when stopped, between phases)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def restart(server: Server) -> None:
    """Stop and start again on the same port, storage kept: the next figure is the new process's own."""
    server.stop()
    if isinstance(server, AnchorRegistry):
        server.start(timeout=START_TIMEOUT)
    else:
        server.start()


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One figure for both servers, with the issue's target when it has one."""

    key: str
    label: str
    anchor: float
    regcache: float
    fmt: str
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        return self.regcache / self.anchor if self.anchor else None


def rows(figures: dict[str, Figures], args: argparse.Namespace, blob_mb: float) -> list[Row]:
    """Every figure of the run, in the order printed."""
    a, r = figures["anchor"], figures["regcache"]
    out: list[Row] = []
    for readers in args.readers:
        limit = RSS_TARGETS_MB.get(readers)
        out.append(Row(f"peak_rss_{readers}_readers_mb", f"peak RSS, {readers} readers of the warm blob (MB)",
                       a.peak_rss_mb[readers], r.peak_rss_mb[readers], "{:.0f}",
                       f"regcache <= {limit:.0f} MB" if limit else "",
                       r.peak_rss_mb[readers] <= limit if limit else None))
        out.append(Row(f"idle_rss_{readers}_readers_mb", "  idle RSS before (MB)",
                       a.idle_rss_mb[readers], r.idle_rss_mb[readers], "{:.0f}"))
    best_a, best_r = max(a.blob_mbps), max(r.blob_mbps)
    out.append(Row("blob_mbps", f"warm {blob_mb:.0f} MB blob, curl, best of {args.repeat} (MB/s)", best_a, best_r,
                   "{:.0f}", f">= {BLOB_TARGET}x anchor", best_r >= BLOB_TARGET * best_a))
    for kind, (label, _) in WRK_KINDS.items():
        wa, wr = a.wrk[kind], r.wrk[kind]
        out.append(Row(f"{kind}_rps", f"{label}, wrk {args.connections} conns (req/s)",
                       wa.requests_per_s, wr.requests_per_s, "{:.0f}", f">= {RPS_TARGET}x anchor",
                       wr.requests_per_s >= RPS_TARGET * wa.requests_per_s))
        out.append(Row(f"{kind}_p50_ms", "  p50 latency (ms)", wa.p50_ms, wr.p50_ms, "{:.2f}"))
        out.append(Row(f"{kind}_p99_ms", "  p99 latency (ms)", wa.p99_ms, wr.p99_ms, "{:.2f}",
                       "< anchor", wr.p99_ms < wa.p99_ms))
    rounds = f"median of {args.rounds}"
    out.append(Row("cold_pulls_s", f"{args.pulls} concurrent pulls, cold, {rounds} (s)", median(a.cold_pulls_s),
                   median(r.cold_pulls_s), "{:.2f}"))
    out.append(Row("warm_pulls_s", f"{args.pulls} concurrent pulls, warm, {rounds} (s)", median(a.warm_pulls_s),
                   median(r.warm_pulls_s), "{:.2f}"))
    cold_warm_a = median([c / w for c, w in zip(a.cold_pulls_s, a.warm_pulls_s)])
    cold_warm_r = median([c / w for c, w in zip(r.cold_pulls_s, r.warm_pulls_s)])
    out.append(Row("cold_warm_ratio", f"  cold / warm, {rounds}", cold_warm_a, cold_warm_r, "{:.2f}",
                   f"regcache <= {COLD_WARM_TARGET}", cold_warm_r <= COLD_WARM_TARGET))
    for key, label, cold, warm in (
            ("server_cpu_s", "the server's CPU", a.cold_server_cpu_s, a.warm_server_cpu_s),
            ("clients_cpu_s", f"the {args.pulls} clients' CPU", a.cold_clients_cpu_s, a.warm_clients_cpu_s)):
        r_cold, r_warm = getattr(r, f"cold_{key}"), getattr(r, f"warm_{key}")
        out.append(Row(f"cold_{key}", f"  {label}, cold, {rounds} (s)", median(cold), median(r_cold), "{:.2f}"))
        out.append(Row(f"warm_{key}", f"  {label}, warm, {rounds} (s)", median(warm), median(r_warm), "{:.2f}"))
    return out


def render(table: Sequence[Row], title: str, notes: Sequence[str]) -> str:
    """The results table: anchor, regcache, regcache / anchor, the target and whether it is met."""
    header = ("metric", "anchor", "regcache", "ratio", "target", "status")
    lines = [[row.label, row.fmt.format(row.anchor), row.fmt.format(row.regcache),
              "-" if row.ratio is None else f"{row.ratio:.2f}x", row.target,
              "" if row.met is None else ("ok" if row.met else "MISSED")] for row in table]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    align = ["<", ">", ">", ">", "<", "<"]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths)).rstrip()

    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, lines), *notes])


def as_json(table: Sequence[Row], args: argparse.Namespace, busy: str, small_blob: int) -> str:
    """Every figure as one JSON line: ``figures[key] = {anchor, regcache, ratio}``, ``targets[key] = {target, met}``."""

    def number(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else round(value, 3)

    return json.dumps({
        "bench": "anchor_bench",
        "revision": git_revision(),
        "busy_before_start": busy,
        "settings": {"blob_mb": args.blob_mb, "readers": args.readers, "reader_rate": args.reader_rate,
                     "pulls": args.pulls, "rounds": args.rounds, "connections": args.connections,
                     "threads": args.threads, "duration_s": args.duration, "repeat": args.repeat,
                     "small_blob_bytes": small_blob},
        "figures": {row.key: {"anchor": number(row.anchor), "regcache": number(row.regcache),
                              "ratio": number(row.ratio)} for row in table},
        "targets": {row.key: {"target": row.target, "met": row.met} for row in table if row.met is not None},
    }, separators=(",", ":"))


# -- main ----------------------------------------------------------------------------------------


def reader_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct reader counts of at least 1, such as 16,64")
    return counts


def big_layers(blob_mb: int) -> list[int]:
    """The multi-layer image: ``blob_mb`` MB, half and a quarter of it (200 + 100 + 50 MB by default)."""
    return [blob_mb * MB, blob_mb * MB // 2, max(blob_mb * MB // 4, 1)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blob-mb", type=int, default=200,
                        help="the largest layer in MB, read by the RSS and throughput phases (default 200); "
                             "the pulled image adds layers of half and a quarter of it")
    parser.add_argument("--readers", type=reader_counts, default=[16, 64],
                        help="concurrent readers of the warm blob, one RSS phase each (default 16,64)")
    parser.add_argument("--reader-rate", default=None,
                        help="curl --limit-rate of each reader, such as 20M (default: as fast as it goes)")
    parser.add_argument("--pulls", type=int, default=16, help="concurrent skopeo pulls, cold then warm (default 16)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="cold-then-warm rounds of those pulls per server, medians printed (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="warm blob downloads per server, best kept (default 3)")
    args = parser.parse_args(argv)
    if min(args.blob_mb, args.pulls, args.rounds, args.connections, args.threads, args.repeat) < 1 \
            or args.duration < 1:
        parser.error("--blob-mb, --pulls, --rounds, --connections, --threads, --repeat and --duration must be at "
                     "least 1")
    if args.threads > args.connections:
        parser.error("wrk needs at least one connection per thread: --threads <= --connections")

    missing = missing_tools()
    if missing:
        print("anchor_bench: skipped: " + "; ".join(missing), flush=True)
        return 0
    signal.signal(signal.SIGTERM, exit_on_signal)
    busy = machine_busy()

    root = Path(tempfile.mkdtemp(prefix="regcache-anchor-bench-"))
    monitor = RssMonitor()  # pull_bench's Bench checkpoints it at resets; the RSS figures here are per phase
    started: list[Server | RegistryServer] = []
    try:
        upstream = RegistryServer.anonymous(root / "upstream")
        started.append(upstream)
        upstream.start(timeout=START_TIMEOUT)
        sizes = big_layers(args.blob_mb)
        progress(f"upstream on {upstream.host}; building and pushing {sum(sizes) / MB:.0f} MB and a small image")
        image = build_image(sizes, seed=f"anchor-bench-{args.blob_mb}")
        push_image(image, upstream, REPOSITORY, TAG)
        small = build_image([SMALL_PAYLOAD], seed="anchor-bench-small")
        push_image(small, upstream, SMALL_REPOSITORY, TAG)

        servers = cast(list[Server], start_side_by_side(root, upstream, monitor, started))

        image_mb = sum(blob.size for blob in image.blobs.values()) // MB
        bench = Bench(root, upstream, list(servers), image, monitor, max(image_mb, 1))
        figures = AnchorBench(bench, servers, small, args).run()
        biggest = max(image.layers, key=lambda layer: layer.size)
        table = rows(figures, args, biggest.size / MB)
        blob_file = root / "ceiling-blob"
        blob_file.write_bytes(biggest.data)
        ceiling = client_ceiling(blob_file, biggest.digest, args.repeat, pull_timeout(args.blob_mb, 1))
        progress(f"warm blob from a bare sendfile server: {ceiling:.0f} MB/s")
        small_blob = small.layers[0].size
        title = (f"anchor_bench: anchor = docker-registry proxy, ratio = regcache / anchor; "
                 f"{len(sizes)}-layer image of {image_mb} MB, small blob {small_blob} bytes, "
                 f"wrk {args.threads} threads x {args.connections} connections x {args.duration:g} s; "
                 f"{busy} busy before start; regcache {git_revision()}")
        notes = [f"the same curl from a bare blocking-sendfile server, best of {args.repeat}: {ceiling:.0f} MB/s "
                 f"(what this curl takes from a server doing nothing else; blob figures move ~15 % between runs)"]
        if not all(f.hwm_reset for f in figures.values()):
            notes.append("note: VmHWM could not be reset (/proc/PID/clear_refs): peak RSS is from 50 ms samples only")
        print(render(table, title, notes), flush=True)
        print(as_json(table, args, busy, small_blob), flush=True)
        return 0
    except BenchError as exc:
        print(f"anchor_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        monitor.stop()
        stop_all(started, root, "anchor_bench")


if __name__ == "__main__":
    sys.exit(main())
