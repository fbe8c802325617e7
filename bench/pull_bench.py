"""Pull benchmark: regcache against the CNCF distribution registry in proxy mode (the "anchor").

One anonymous upstream ``docker-registry`` gets an image of ``--size-mb`` MB in 3 layers
(4/7, 2/7 and 1/7 of it: 200 + 100 + 50 MB by default; random bytes, gzip level 0, so the blobs
are the payload's size). In front of it run, each with its own empty storage:

* the anchor: a second ``docker-registry`` with ``proxy: remoteurl: <upstream>``;
* regcache: ``regcache --home DIR serve`` with one rule ``* => <upstream>/*``, configured with
  the CLI (``upstream add``, ``cache create``), so both serve the same repository name.

Measured for both, with regcache / anchor as the ratio (all pulls are
``skopeo copy --src-tls-verify=false docker://HOST/REPO:TAG oci:DIR:TAG`` into a new directory):

* cold pull: both caches restarted with empty storage first; median of ``--repeat`` runs, with
  the CPU seconds the cache process used (steadier than wall time on a small machine) and the
  blob bytes the upstream served (the largest of the runs) divided by the image size;
* warm pull: the same pull again; median of ``--repeat`` runs;
* warm throughput of the largest layer blob with ``curl``; median of ``--repeat`` runs;
* ``--concurrency`` simultaneous cold pulls: wall time, the cache's CPU seconds, and the blob
  bytes the upstream served (its access log: successful blob GETs) divided by the image size;
* peak RSS of each server process over the whole run (VmHWM of every process incarnation, and
  VmRSS sampled every 50 ms).

Run from the repository root with the dev venv (``docker-registry``, ``skopeo`` and ``curl``
must be installed; everything listens on 127.0.0.1; under 2 minutes at full size on 2 cores)::

    /work/venv/bin/python bench/pull_bench.py                 # 350 MB image, 16 concurrent pulls
    /work/venv/bin/python bench/pull_bench.py --size-mb 30    # smoke test, ~20 s
    /work/venv/bin/python bench/pull_bench.py --repeat 7      # steadier medians, ~2.5 minutes

Wall times on a 2-core machine move by 10-15 % from run to run, more when anything else runs
(the title shows how busy the CPUs were just before): judge the cold target on ``--repeat 7`` on an idle
machine, and look at the CPU seconds, which barely move.

Sizes are decimal: 1 MB = 10**6 bytes. Every process it starts is stopped and its temporary
directory removed on exit, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `tests` is not installed; it is importable from the root
    sys.path.insert(0, str(REPO_ROOT))

from tests.registries.client import push_image  # noqa: E402
from tests.registries.images import Image, build_image  # noqa: E402
from tests.registries.server import RegistryServer, free_port  # noqa: E402
from tests.registries.skopeo import OciLayout, skopeo_binary  # noqa: E402

MB = 1_000_000
REPOSITORY = "bench/image"
TAG = "latest"
RULE = "bench-rule"
SAMPLE_INTERVAL = 0.05
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 30.0


class BenchError(RuntimeError):
    """A step of the benchmark failed (a server did not start, a pull failed, ...)."""


# -- the servers ---------------------------------------------------------------------------------


class Cache(Protocol):
    """A pull-through cache under test: a process on 127.0.0.1 that can be reset to empty storage."""

    name: str

    @property
    def host(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def reset(self) -> None:
        """Stop, delete all cached content, start again on the same port."""

    def stop(self) -> None: ...


def process_pid(server: RegistryServer) -> int | None:
    """The pid of a running RegistryServer (the helper keeps its Popen private)."""
    process: subprocess.Popen[bytes] | None = getattr(server, "_process", None)
    return process.pid if process is not None and process.poll() is None else None


def pid_of(cache: Cache) -> Callable[[], int | None]:
    """A getter of the cache's current pid (it changes at every reset)."""
    return lambda: cache.pid


class AnchorRegistry(RegistryServer):
    """``docker-registry`` in pull-through (proxy) mode in front of ``remote_url``."""

    name = "anchor"

    def __init__(self, root: Path, remote_url: str) -> None:
        super().__init__(root)
        self.remote_url = remote_url

    def config(self) -> dict[str, object]:
        config = super().config()
        config["proxy"] = {"remoteurl": self.remote_url}
        return config

    @property
    def pid(self) -> int | None:
        return process_pid(self)

    def reset(self) -> None:
        self.stop()
        shutil.rmtree(self.storage_path, ignore_errors=True)
        self.start(timeout=START_TIMEOUT)


class RegcacheServer:
    """``regcache --home HOME serve --listen 127.0.0.1:PORT`` as a subprocess, with one catch-all rule."""

    name = "regcache"

    def __init__(self, root: Path, upstream: RegistryServer) -> None:
        self.root = root
        self.home = root / "home"
        self.log_path = root / "regcache.log"
        self.upstream = upstream
        self.port = free_port()
        self.executable = str(Path(sys.executable).parent / "regcache")
        if not os.access(self.executable, os.X_OK):
            found = shutil.which("regcache")
            if found is None:
                raise BenchError("the `regcache` command is not installed (pip install -e . in the venv)")
            self.executable = found
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def cli(self, *args: str) -> None:
        """Run ``regcache --home HOME ARGS``; raise with its output if it fails."""
        command = [self.executable, "--home", str(self.home), *args]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise BenchError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")

    def configure(self) -> None:
        """A fresh state directory: the upstream (anonymous) and the rule ``* => upstream/*``."""
        self.home.mkdir(parents=True)
        login_server = self.upstream.host
        self.cli("upstream", "add", "--login-server", login_server, "--url", self.upstream.url,
                 "--auth", "anonymous")
        self.cli("cache", "create", "-n", RULE, "-s", f"{login_server}/*", "-t", "*")

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.executable, "--home", str(self.home), "serve", "--listen", self.host],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(f"regcache serve exited {self._process.returncode}:\n{self._log_tail()}")
            if _http_status(self.port, "/v2/") == 200:
                self._check_is_python()
                return
            time.sleep(0.02)
        self.stop()
        raise BenchError(f"regcache serve did not answer on {self.host} within {START_TIMEOUT:.0f} s:\n"
                         f"{self._log_tail()}")

    def _check_is_python(self) -> None:
        """The pid measured must be the server itself (the console script execs Python, no wrapper)."""
        pid = self.pid
        exe = os.readlink(f"/proc/{pid}/exe") if pid else ""
        if "python" not in Path(exe).name:
            raise BenchError(f"regcache's pid {pid} runs {exe!r}, not Python: RSS would measure a wrapper")

    def stop(self) -> None:
        """SIGTERM (regcache finishes in-flight requests), then SIGKILL after STOP_TIMEOUT."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def reset(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
        self.configure()
        self.start()

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _http_status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


# -- peak RSS ------------------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/PID/status; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return 0


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


class RssMonitor:
    """Peak resident memory per named server, across restarts (each restart is a new pid).

    A thread samples VmRSS every 50 ms; ``checkpoint`` adds the exact VmHWM of the current
    process and must be called before the process is stopped.
    """

    def __init__(self) -> None:
        self._pids: dict[str, Callable[[], int | None]] = {}
        self._peak_kb: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)

    def watch(self, name: str, pid: Callable[[], int | None]) -> None:
        with self._lock:
            self._pids[name] = pid
            self._peak_kb.setdefault(name, 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def checkpoint(self, name: str) -> None:
        pid = self._pids[name]()
        if pid is not None:
            self._record(name, _status_kb(pid, "VmHWM"))

    def peak_mb(self, name: str) -> float:
        return self._peak_kb.get(name, 0) * 1024 / MB

    def _record(self, name: str, kb: int) -> None:
        with self._lock:
            if kb > self._peak_kb.get(name, 0):
                self._peak_kb[name] = kb

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            with self._lock:
                watched = list(self._pids.items())
            for name, pid_of in watched:
                pid = pid_of()
                if pid is not None:
                    self._record(name, _status_kb(pid, "VmRSS"))


# -- clients -------------------------------------------------------------------------------------


def pull_timeout(size_mb: int, pulls: int) -> float:
    """A generous bound for ``pulls`` simultaneous pulls (at least 5 MB/s in aggregate)."""
    return max(60.0, pulls * size_mb / 5.0)


def timed_pulls(host: str, destinations: Sequence[Path], image: Image, timeout: float) -> float:
    """Start one skopeo pull of ``host/REPOSITORY:TAG`` per destination at once; wall seconds until all end.

    Each destination must not exist yet. Raises BenchError if any pull fails, times out or
    does not hold the image's layers; every skopeo still running is killed on the way out.
    """
    binary = skopeo_binary()
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    started = time.perf_counter()
    try:
        for dest in destinations:
            err_path = dest.with_name(dest.name + ".stderr")
            with err_path.open("wb") as err:
                command = [binary, "--insecure-policy", "copy", "--src-tls-verify=false", "--src-no-creds",
                           f"docker://{host}/{REPOSITORY}:{TAG}", f"oci:{dest}:{TAG}"]
                processes.append((subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL, stderr=err), err_path))
        deadline = started + timeout
        for process, err_path in processes:
            try:
                process.wait(max(deadline - time.perf_counter(), 0.1))
            except subprocess.TimeoutExpired:
                raise BenchError(f"skopeo pulls from {host} did not finish within {timeout:.0f} s") from None
            if process.returncode != 0:
                raise BenchError(f"skopeo pull from {host} exited {process.returncode}: "
                                 f"{err_path.read_text(errors='replace').strip()[-2000:]}")
        elapsed = time.perf_counter() - started
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    expected = [layer.digest for layer in image.layers]
    for dest in destinations:
        if OciLayout(dest).layer_digests(TAG) != expected:
            raise BenchError(f"the pull into {dest} does not hold the image's layers")
    return elapsed


def curl_throughput(host: str, digest: str, size: int, timeout: float) -> float:
    """MB/s of one ``curl`` GET of a blob, body discarded."""
    url = f"http://{host}/v2/{REPOSITORY}/blobs/{digest}"
    result = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", str(int(timeout)),
                             "-w", "%{http_code} %{size_download} %{time_total}", url],
                            check=False, capture_output=True, text=True, timeout=timeout + 5,
                            stdin=subprocess.DEVNULL)
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 3 or fields[0] != "200" or int(fields[1]) != size:
        raise BenchError(f"curl {url} failed (exit {result.returncode}): {result.stdout!r} {result.stderr!r}")
    return int(fields[1]) / MB / float(fields[2])


def upstream_blob_bytes(upstream: RegistryServer, settle: float = 1.0, timeout: float = 30.0) -> int:
    """Bytes of successful blob GETs in the upstream's access log, once the figure stopped changing."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        total = sum(entry.size for entry in upstream.blob_gets())
        now = time.monotonic()
        if total != last:
            last, since = total, now
        elif now - since >= settle or now > deadline:
            return total
        time.sleep(0.2)


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Figures:
    """Everything measured for one cache."""

    cold: list[float] = field(default_factory=list)
    cold_cpu: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    blob_mbps: list[float] = field(default_factory=list)
    cold_upstream_bytes: list[int] = field(default_factory=list)
    concurrent_wall: float = 0.0
    concurrent_cpu: float = 0.0
    concurrent_upstream_bytes: int = 0
    peak_rss_mb: float = 0.0


@dataclass
class Bench:
    """The servers, the image and the scratch space of one run."""

    root: Path
    upstream: RegistryServer
    caches: list[Cache]
    image: Image
    monitor: RssMonitor
    size_mb: int
    _serial: int = 0

    @property
    def image_bytes(self) -> int:
        return sum(blob.size for blob in self.image.blobs.values())

    def destinations(self, count: int) -> list[Path]:
        self._serial += 1
        base = self.root / "pulls" / f"{self._serial:03d}"
        base.mkdir(parents=True)
        return [base / f"oci-{i:02d}" for i in range(count)]

    def discard(self, destinations: Sequence[Path]) -> None:
        if destinations:
            shutil.rmtree(destinations[0].parent, ignore_errors=True)

    def reset(self, cache: Cache) -> None:
        self.monitor.checkpoint(cache.name)
        cache.reset()

    def pulls(self, cache: Cache, count: int) -> tuple[float, float]:
        """``count`` simultaneous pulls through ``cache``: wall seconds, and CPU seconds the cache used."""
        destinations = self.destinations(count)
        pid = cache.pid
        cpu = cpu_seconds(pid)
        try:
            wall = timed_pulls(cache.host, destinations, self.image, pull_timeout(self.size_mb, count))
            return wall, cpu_seconds(pid) - cpu
        finally:
            self.discard(destinations)

    def rounds(self, repeat: int) -> Iterator[tuple[int, Cache]]:
        """``repeat`` rounds over the caches, alternating who goes first (neither always pulls second)."""
        for i in range(repeat):
            for cache in self.caches if i % 2 == 0 else self.caches[::-1]:
                yield i, cache

    def run(self, repeat: int, concurrency: int) -> dict[str, Figures]:
        figures = {cache.name: Figures() for cache in self.caches}
        for i, cache in self.rounds(repeat):
            self.reset(cache)
            self.upstream.clear_log()
            wall, cpu = self.pulls(cache, 1)
            figures[cache.name].cold.append(wall)
            figures[cache.name].cold_cpu.append(cpu)
            figures[cache.name].cold_upstream_bytes.append(upstream_blob_bytes(self.upstream))
            progress(f"cold pull {i + 1}/{repeat} via {cache.name}: {figures[cache.name].cold[-1]:.2f} s")
        for i, cache in self.rounds(repeat):
            figures[cache.name].warm.append(self.pulls(cache, 1)[0])
            progress(f"warm pull {i + 1}/{repeat} via {cache.name}: {figures[cache.name].warm[-1]:.2f} s")
        largest = max(self.image.layers, key=lambda layer: layer.size)
        for i, cache in self.rounds(repeat):
            mbps = curl_throughput(cache.host, largest.digest, largest.size, pull_timeout(self.size_mb, 1))
            figures[cache.name].blob_mbps.append(mbps)
            progress(f"warm blob {i + 1}/{repeat} via {cache.name}: {mbps:.0f} MB/s")
        for cache in self.caches:
            self.reset(cache)
            self.upstream.clear_log()
            wall, cpu = self.pulls(cache, concurrency)
            figures[cache.name].concurrent_wall, figures[cache.name].concurrent_cpu = wall, cpu
            figures[cache.name].concurrent_upstream_bytes = upstream_blob_bytes(self.upstream)
            progress(f"{concurrency} concurrent cold pulls via {cache.name}: "
                     f"{figures[cache.name].concurrent_wall:.2f} s")
        for cache in self.caches:
            self.monitor.checkpoint(cache.name)
            figures[cache.name].peak_rss_mb = self.monitor.peak_mb(cache.name)
        return figures


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def layer_sizes(size_mb: int) -> list[int]:
    """4/7, 2/7 and 1/7 of ``size_mb`` MB, in bytes (200 + 100 + 50 MB for 350)."""
    total = size_mb * MB
    return [total * 4 // 7, total * 2 // 7, total - total * 4 // 7 - total * 2 // 7]


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy(seconds: float = 1.0) -> str:
    """How busy the CPUs are before the run starts: other work skews wall times (not CPU seconds)."""
    try:
        busy0, total0 = _cpu_times()
        time.sleep(seconds)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return "?"
    return f"{100 * (busy1 - busy0) / max(total1 - total0, 1):.0f} %"


def render(figures: dict[str, Figures], bench: Bench, repeat: int, concurrency: int, busy: str) -> str:
    """The results table: anchor, regcache, regcache / anchor, the target and whether it is met."""
    anchor, regcache = figures["anchor"], figures["regcache"]
    image = bench.image_bytes
    largest = max(layer.size for layer in bench.image.layers) / MB
    median = statistics.median

    rows: list[tuple[str, float, float, str, str, bool | None]] = []

    def row(label: str, a: float, r: float, fmt: str, target: str = "",
            ok: Callable[[float, float], bool] | None = None) -> None:
        rows.append((label, a, r, fmt, target, ok(a, r) if ok else None))

    row(f"cold pull, median of {repeat} (s)", median(anchor.cold), median(regcache.cold), "{:.2f}",
        "<= 1.0x anchor", lambda a, r: r <= a)
    row("  server CPU per cold pull (s)", median(anchor.cold_cpu), median(regcache.cold_cpu), "{:.2f}")
    row("  upstream blob bytes / image", max(anchor.cold_upstream_bytes) / image,
        max(regcache.cold_upstream_bytes) / image, "{:.2f}")
    row(f"warm pull, median of {repeat} (s)", median(anchor.warm), median(regcache.warm), "{:.2f}",
        "<= 1.2x anchor", lambda a, r: r <= 1.2 * a)
    row(f"warm {largest:.0f} MB blob, curl (MB/s)", median(anchor.blob_mbps), median(regcache.blob_mbps),
        "{:.0f}")
    row(f"{concurrency} concurrent cold pulls (s)", anchor.concurrent_wall, regcache.concurrent_wall, "{:.2f}")
    row("  server CPU (s)", anchor.concurrent_cpu, regcache.concurrent_cpu, "{:.2f}")
    row("  upstream blob bytes / image", anchor.concurrent_upstream_bytes / image,
        regcache.concurrent_upstream_bytes / image, "{:.2f}", "regcache <= 1.05", lambda a, r: r <= 1.05)
    row("peak RSS (MB)", anchor.peak_rss_mb, regcache.peak_rss_mb, "{:.0f}", "regcache < 200 MB",
        lambda a, r: r < 200)

    header = ("metric", "anchor", "regcache", "ratio", "target", "status")
    lines = [[label, fmt.format(a), fmt.format(r), f"{r / a:.2f}x" if a else "-", target,
              "" if ok is None else ("ok" if ok else "MISSED")] for label, a, r, fmt, target, ok in rows]
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]
    align = ["<", ">", ">", ">", "<", "<"]

    def fmt_line(cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths)).rstrip()

    sizes = " + ".join(f"{layer.size / MB:.0f}" for layer in bench.image.layers)
    title = (f"pull_bench: image {image / MB:.0f} MB in {len(bench.image.layers)} layers ({sizes} MB), "
             f"{os.cpu_count()} CPUs ({busy} busy before start), regcache {git_revision()}")
    out = [title,
           fmt_line(header), fmt_line(["-" * w for w in widths]), *map(fmt_line, lines),
           f"samples (s): cold anchor {format_samples(anchor.cold)}; cold regcache {format_samples(regcache.cold)}",
           f"             warm anchor {format_samples(anchor.warm)}; warm regcache {format_samples(regcache.warm)}",
           f"upstream registry peak RSS: {bench.monitor.peak_mb('upstream'):.0f} MB"]
    return "\n".join(out)


def format_samples(values: Sequence[float]) -> str:
    return "[" + " ".join(f"{v:.2f}" for v in values) + "]"


def git_revision() -> str:
    try:
        result = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                                check=False, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "proxy"],
                               check=False, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "(unknown revision)"
    return result.stdout.strip() + ("+dirty proxy/" if dirty else "") if result.returncode == 0 else "(no git)"


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind through the finally blocks that stop the servers."""
    raise SystemExit(128 + signum)


def stop_all(started: Sequence[Any], root: Path, bench_name: str) -> None:
    """Stop what a benchmark started, newest first, whatever fails, and remove its directory."""
    for server in reversed(started):
        try:
            server.stop()
        except Exception as exc:  # noqa: BLE001 - whatever it is, keep stopping the others
            print(f"{bench_name}: stopping {server!r}: {exc}", file=sys.stderr)
    shutil.rmtree(root, ignore_errors=True)


def start_side_by_side(root: Path, upstream: RegistryServer, monitor: RssMonitor,
                       started: list[Any]) -> list[Cache]:
    """The anchor and regcache in front of ``upstream``, started (and added to ``started``, for the clean-up)
    and watched by ``monitor``."""
    anchor = AnchorRegistry(root / "anchor", upstream.url)
    regcache = RegcacheServer(root / "regcache", upstream)
    started += [anchor, regcache]
    anchor.start(timeout=START_TIMEOUT)
    regcache.configure()
    regcache.start()
    caches: list[Cache] = [anchor, regcache]
    for cache in caches:
        monitor.watch(cache.name, pid_of(cache))
    monitor.start()
    progress(f"anchor on {anchor.host}, regcache on {regcache.host}")
    return caches


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=350, help="image size in MB (default 350)")
    parser.add_argument("--concurrency", type=int, default=16, help="simultaneous cold pulls (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cold/warm/blob median (default 3)")
    args = parser.parse_args(argv)
    if args.size_mb < 1 or args.concurrency < 1 or args.repeat < 1:
        parser.error("--size-mb, --concurrency and --repeat must be at least 1")
    signal.signal(signal.SIGTERM, exit_on_signal)
    busy = machine_busy()

    root = Path(tempfile.mkdtemp(prefix="regcache-pull-bench-"))
    monitor = RssMonitor()
    started: list[Cache | RegistryServer] = []
    try:
        upstream = RegistryServer.anonymous(root / "upstream")
        started.append(upstream)
        upstream.start(timeout=START_TIMEOUT)
        monitor.watch("upstream", lambda: process_pid(upstream))
        progress(f"upstream on {upstream.host}; building and pushing {args.size_mb} MB")
        image = build_image(layer_sizes(args.size_mb), seed=f"pull-bench-{args.size_mb}")
        push_image(image, upstream, REPOSITORY, TAG)

        caches = start_side_by_side(root, upstream, monitor, started)

        bench = Bench(root, upstream, caches, image, monitor, args.size_mb)
        figures = bench.run(args.repeat, args.concurrency)
        monitor.checkpoint("upstream")
        print(render(figures, bench, args.repeat, args.concurrency, busy), flush=True)
        return 0
    except BenchError as exc:
        print(f"pull_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        monitor.stop()
        stop_all(started, root, "pull_bench")


if __name__ == "__main__":
    sys.exit(main())
