"""S3 benchmark: pulls through `regcache serve` with blobs in an S3 bucket (Swift + s3api) vs the filesystem.

One anonymous upstream ``docker-registry`` gets an image of ``--size-mb`` MB in 3 layers (4/7, 2/7
and 1/7 of it, as in ``pull_bench.py``: random bytes, so the blobs are the payload's size). A
local OpenStack Swift with s3api (``tests/s3/swift.py``) is the S3 store. Two things are measured:

1. One node, filesystem backend vs s3 backend: a cold pull (the node restarted with an empty state
   directory and, for s3, a new empty bucket), then a warm pull (the same image again through the
   same node), ``--repeat`` times each, alternating which backend goes first. For s3 the warm pull
   starts only once the bucket holds every blob and no multipart upload is left (the cold pull's
   clients get their last byte before the upload completes; that lag is reported). Reported: median
   seconds, s3 / filesystem ratios, the node's CPU seconds, Swift's CPU seconds (all its processes:
   the store shares the 2 cores), and the upstream's blob bytes per pull (0 for a warm pull).
2. Scale-out: a new image (new random layers, pushed to the same repository and tag) and
   ``--concurrency`` (default 12) simultaneous cold pulls, run twice, each time on a new empty bucket
   and new nodes: through ONE s3 node (the baseline), then split round robin over ``--nodes``
   (default 3) s3 nodes in a fleet (``--no-fleet``: each node on its own). Reported for both: wall
   time, blob bytes the upstream served / image size (target: <= 1.05 for one node or a fleet, the
   fleet downloading each blob once; <= N nodes without a fleet), the most GETs of any one blob,
   each node's ``regcache_bytes_fetched`` from its ``/metrics``, and whether every pull verified
   (``assert_pulled``: layer digests in manifest order, every layer byte for byte, the config).
   ``--skip-single`` runs only this part.

All pulls are ``skopeo copy --src-tls-verify=false docker://HOST/REPO:TAG oci:DIR:TAG`` into a new
directory; the upstream's blob bytes come from its access log (``pull_bench.upstream_blob_bytes``).
Nodes are configured as ``tests/scale_out/nodes.py`` does (the S3 keys reach them as ``env://``
secrets through this process's environment).

Run from the repository root with the dev venv (``docker-registry``, ``skopeo``, Swift and
memcached must be installed; everything listens on 127.0.0.1)::

    /work/venv/bin/python bench/s3_bench.py                           # 200 MB image, 12 pulls: 1 node, 3 nodes
    /work/venv/bin/python bench/s3_bench.py --size-mb 30 --repeat 1   # smoke test
    /work/venv/bin/python bench/s3_bench.py --skip-single --size-mb 20 --nodes 3 --concurrency 12
    /work/venv/bin/python bench/s3_bench.py --json s3.json            # also write every figure as JSON

Sizes are decimal: 1 MB = 10**6 bytes. Every process it starts is stopped and its temporary
directory removed on exit, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `tests` and `bench` are not installed; both import from the root
    sys.path.insert(0, str(REPO_ROOT))

from bench.pull_bench import (  # noqa: E402
    MB,
    REPOSITORY,
    START_TIMEOUT,
    TAG,
    Bench,
    BenchError,
    Cache,
    RegcacheServer,
    RssMonitor,
    cpu_seconds,
    exit_on_signal,
    format_samples,
    git_revision,
    layer_sizes,
    machine_busy,
    pid_of,
    progress,
    pull_timeout,
    stop_all,
    timed_pulls,
    upstream_blob_bytes,
)
from regcache.proxy.core.fleet import HEARTBEAT_INTERVAL  # noqa: E402
from tests.registries.client import push_image  # noqa: E402
from tests.registries.images import Image, build_image  # noqa: E402
from tests.registries.server import RegistryServer  # noqa: E402
from tests.registries.skopeo import OciLayout, assert_pulled  # noqa: E402
from tests.s3.swift import SwiftError, SwiftS3Server  # noqa: E402
from tests.scale_out.nodes import configure_node, s3_env, wait_for_image_in_bucket  # noqa: E402

#: the environment variable the bench's fleet secret is given in (an env:// secret id)
FLEET_SECRET_VAR = "REGCACHE_BENCH_FLEET_SECRET"

BUCKET_TIMEOUT = 60.0
#: upstream blob bytes / image for one node or a fleet: each blob downloaded once (a little slack for a retry)
TARGET_ONCE = 1.05


# -- the nodes -----------------------------------------------------------------------------------


class FilesystemNode(RegcacheServer):
    """``regcache serve`` with the default filesystem backend (pull_bench's server, under another name)."""

    name = "filesystem"


class S3Node(RegcacheServer):
    """``regcache serve`` with the s3 backend: a new bucket at every (re)configure, unless given one."""

    def __init__(self, root: Path, upstream: RegistryServer, swift: SwiftS3Server, name: str = "s3",
                 bucket: str | None = None, fleet: bool = False) -> None:
        super().__init__(root, upstream)
        self.name = name
        self.swift = swift
        self._fixed_bucket = bucket
        self.bucket = bucket or ""
        #: join the fleet of the nodes on the bucket (docs/scale-out.md, "A fleet"): one download per blob
        self.fleet = fleet

    def configure(self) -> None:
        """Upstream, the rule ``bench/image => upstream/bench/image`` and s3 storage, as the scale-out tests do."""
        self.home.mkdir(parents=True)
        self.bucket = self._fixed_bucket or self.swift.create_bucket()
        configure_node(self.home, self.swift, self.bucket, self.upstream.host, self.upstream.url,
                       {REPOSITORY: REPOSITORY})
        if self.fleet:
            self.cli("settings", "set", "fleet-address", f"http://{self.host}")
            self.cli("settings", "set", "fleet-secret", f"env://{FLEET_SECRET_VAR}")

    def reset(self) -> None:
        old = self.bucket if self._fixed_bucket is None else ""
        super().reset()
        if old:
            self.swift.delete_bucket(old)  # keeps the store's disk small; the next cold pull has a new one

    def bytes_fetched(self) -> int:
        """``regcache_bytes_fetched`` from the node's ``/metrics`` (-1 if unreadable).

        It counts the blob bytes of every "miss", and a client that joins a download in flight is a
        miss too: with 4 pulls per node it reads 4x what the node fetched (the upstream's log is the truth).
        """
        try:
            with urllib.request.urlopen(f"http://{self.host}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return -1
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("regcache_bytes_fetched_total")))


def swift_cpu_seconds(swift: SwiftS3Server) -> float:
    """CPU seconds all the store's processes (proxy, object, container, account, memcached) used so far."""
    processes = getattr(swift, "_processes", {})  # the helper keeps its Popens private
    return sum(cpu_seconds(p.pid) for p in processes.values() if p.poll() is None)


def wait_for_bucket(swift: SwiftS3Server, bucket: str, image: Image) -> float:
    """Seconds until the bucket holds every blob of ``image`` and no multipart upload is pending."""
    try:
        return wait_for_image_in_bucket(swift, bucket, image.blobs, BUCKET_TIMEOUT)[0]
    except AssertionError as exc:
        raise BenchError(str(exc)) from None


# -- the figures ---------------------------------------------------------------------------------


@dataclass
class Single:
    """Cold and warm pulls through one node."""

    cold_s: list[float] = field(default_factory=list)
    warm_s: list[float] = field(default_factory=list)
    cold_node_cpu_s: list[float] = field(default_factory=list)
    warm_node_cpu_s: list[float] = field(default_factory=list)
    cold_swift_cpu_s: list[float] = field(default_factory=list)
    warm_swift_cpu_s: list[float] = field(default_factory=list)
    cold_upstream_bytes: list[int] = field(default_factory=list)
    warm_upstream_bytes: list[int] = field(default_factory=list)
    upload_lag_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0


@dataclass
class ScaleOut:
    """Concurrent cold pulls through ``nodes`` nodes on one new bucket (in a fleet, or not)."""

    nodes: int = 2
    fleet: bool = True
    pulls: int = 0
    wall_s: float = 0.0
    node_cpu_s: float = 0.0
    swift_cpu_s: float = 0.0
    image_bytes: int = 0
    upstream_blob_bytes: int = 0
    upstream_per_image: float = 0.0
    max_gets_per_blob: int = 0
    node_bytes_fetched: dict[str, int] = field(default_factory=dict)
    verified: int = 0
    failures: list[str] = field(default_factory=list)
    upload_lag_s: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def target(self) -> float:
        """The most upstream blob bytes / image allowed: once for one node or a fleet, once per node otherwise."""
        return TARGET_ONCE if self.fleet or self.nodes == 1 else float(self.nodes)

    @property
    def target_met(self) -> bool:
        return self.upstream_per_image <= self.target and self.verified == self.pulls


# -- the runs ------------------------------------------------------------------------------------


def single_node(bench: Bench, swift: SwiftS3Server, repeat: int) -> dict[str, Single]:
    """``repeat`` rounds of cold then warm pull through each node (alternating who goes first)."""
    figures = {cache.name: Single() for cache in bench.caches}
    for i, cache in bench.rounds(repeat):
        f = figures[cache.name]
        bench.reset(cache)
        for kind in ("cold", "warm"):
            bench.upstream.clear_log()
            swift_cpu = swift_cpu_seconds(swift)
            wall, cpu = bench.pulls(cache, 1)
            getattr(f, f"{kind}_s").append(wall)
            getattr(f, f"{kind}_node_cpu_s").append(cpu)
            getattr(f, f"{kind}_swift_cpu_s").append(swift_cpu_seconds(swift) - swift_cpu)
            getattr(f, f"{kind}_upstream_bytes").append(upstream_blob_bytes(bench.upstream, settle=0.5))
            lag = ""
            if kind == "cold" and isinstance(cache, S3Node):
                f.upload_lag_s.append(wait_for_bucket(swift, cache.bucket, bench.image))
                lag = f", bucket complete {f.upload_lag_s[-1]:.2f} s later"
            progress(f"{kind} pull {i + 1}/{repeat} via {cache.name}: {wall:.2f} s (node CPU {cpu:.2f} s){lag}")
    for cache in bench.caches:
        bench.monitor.checkpoint(cache.name)
        figures[cache.name].peak_rss_mb = bench.monitor.peak_mb(cache.name)
    return figures


def scale_out(bench: Bench, swift: SwiftS3Server, nodes: Sequence[S3Node], pulls: int) -> ScaleOut:
    """``pulls`` simultaneous cold pulls, split evenly across ``nodes`` (all on one new bucket)."""
    result = ScaleOut(nodes=len(nodes), fleet=all(node.fleet for node in nodes) and len(nodes) > 1, pulls=pulls,
                      image_bytes=bench.image_bytes)
    destinations = bench.destinations(pulls)
    groups = {node.name: (node, destinations[k::len(nodes)]) for k, node in enumerate(nodes)}
    errors: dict[str, str] = {}

    def pull(node: S3Node, dests: list[Path]) -> None:
        try:
            timed_pulls(node.host, dests, bench.image, pull_timeout(bench.size_mb, pulls))
        except BenchError as exc:
            errors[node.name] = str(exc)

    bench.upstream.clear_log()
    node_cpu = {node.name: cpu_seconds(node.pid) for node in nodes}
    swift_cpu = swift_cpu_seconds(swift)
    threads = [threading.Thread(target=pull, args=group, name=f"pulls via {name}") for name, group in groups.items()]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - started
    result.node_cpu_s = sum(cpu_seconds(node.pid) - node_cpu[node.name] for node in nodes)
    result.swift_cpu_s = swift_cpu_seconds(swift) - swift_cpu
    try:
        result.upstream_blob_bytes = upstream_blob_bytes(bench.upstream)
        result.upstream_per_image = result.upstream_blob_bytes / result.image_bytes
        gets = Counter(entry.blob[1] for entry in bench.upstream.blob_gets() if entry.blob)
        result.max_gets_per_blob = max(gets.values(), default=0)
        result.node_bytes_fetched = {node.name: node.bytes_fetched() for node in nodes}
        for name, (_, dests) in groups.items():
            for dest in dests:
                if name in errors:
                    result.failures.append(f"{dest.name} via {name}: {errors[name][-300:]}")
                    continue
                try:
                    assert_pulled(OciLayout(dest), TAG, bench.image)
                    result.verified += 1
                except AssertionError as exc:
                    result.failures.append(f"{dest.name} via {name}: does not hold the image ({exc})")
        result.upload_lag_s = wait_for_bucket(swift, nodes[0].bucket, bench.image)
    finally:
        bench.discard(destinations)
    for node in nodes:
        bench.monitor.checkpoint(node.name)
        result.peak_rss_mb[node.name] = bench.monitor.peak_mb(node.name)
    progress(f"{pulls} concurrent cold pulls via {len(nodes)} node(s): {result.wall_s:.2f} s, "
             f"upstream {result.upstream_per_image:.2f} x image, {result.verified}/{pulls} verified")
    return result


# -- output --------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def render_single(single: dict[str, Single], size: int, repeat: int) -> list[str]:
    """The one-node table: filesystem vs s3, cold and warm (``size``: the image's blob bytes)."""
    fs, s3 = single["filesystem"], single["s3"]
    median = statistics.median

    def row(label: str, a: float, b: float, fmt: str, ratio: bool = True) -> list[str]:
        return [label, fmt.format(a), fmt.format(b), f"{b / a:.2f}x" if ratio and a else ""]

    rows = [
        row(f"cold pull, median of {repeat} (s)", median(fs.cold_s), median(s3.cold_s), "{:.2f}"),
        row("  node CPU (s)", median(fs.cold_node_cpu_s), median(s3.cold_node_cpu_s), "{:.2f}"),
        row("  Swift CPU (s)", median(fs.cold_swift_cpu_s), median(s3.cold_swift_cpu_s), "{:.2f}", False),
        row("  upstream blob bytes / image", max(fs.cold_upstream_bytes) / size,
            max(s3.cold_upstream_bytes) / size, "{:.2f}", False),
        ["  bucket complete after pull (s)", "", f"{median(s3.upload_lag_s):.2f}", ""],
        row(f"warm pull, median of {repeat} (s)", median(fs.warm_s), median(s3.warm_s), "{:.2f}"),
        row("  node CPU (s)", median(fs.warm_node_cpu_s), median(s3.warm_node_cpu_s), "{:.2f}"),
        row("  Swift CPU (s)", median(fs.warm_swift_cpu_s), median(s3.warm_swift_cpu_s), "{:.2f}", False),
        row("  upstream blob bytes / image", max(fs.warm_upstream_bytes) / size,
            max(s3.warm_upstream_bytes) / size, "{:.2f}", False),
        row("peak RSS (MB)", fs.peak_rss_mb, s3.peak_rss_mb, "{:.0f}"),
    ]
    samples = [f"samples (s): cold fs {format_samples(fs.cold_s)}; cold s3 {format_samples(s3.cold_s)}",
               f"             warm fs {format_samples(fs.warm_s)}; warm s3 {format_samples(s3.warm_s)}"]
    return [*_table(("one node", "filesystem", "s3", "s3/fs"), rows, "<>>>"), *samples]


def render_scale_out(one: ScaleOut, many: ScaleOut) -> list[str]:
    """The same cold pulls through one node and through N nodes, side by side, with their targets."""
    def status(out: ScaleOut) -> str:
        return "ok" if out.upstream_per_image <= out.target else "MISSED"

    def fetched(out: ScaleOut) -> str:
        return " + ".join(f"{n / MB:.0f}" for n in out.node_bytes_fetched.values())

    def rss(out: ScaleOut) -> str:
        return " / ".join(f"{mb:.0f}" for mb in out.peak_rss_mb.values())

    ratio = f"{many.wall_s / one.wall_s:.2f}x" if one.wall_s else ""
    rows = [
        ["wall time (s)", f"{one.wall_s:.2f}", f"{many.wall_s:.2f}", f"{ratio} of one node"],
        ["  nodes' CPU / Swift CPU (s)", f"{one.node_cpu_s:.2f} / {one.swift_cpu_s:.2f}",
         f"{many.node_cpu_s:.2f} / {many.swift_cpu_s:.2f}", ""],
        ["upstream blob bytes / image", f"{one.upstream_per_image:.2f} {status(one)}",
         f"{many.upstream_per_image:.2f} {status(many)}", f"<= {one.target:.2f} / <= {many.target:.2f}"],
        ["  most GETs of one blob", str(one.max_gets_per_blob), str(many.max_gets_per_blob),
         f"1 / {1 if many.fleet else many.nodes}"],
        ["  regcache_bytes_fetched per node (MB)", fetched(one), fetched(many), ""],
        ["pulls verified (assert_pulled)", f"{one.verified}/{one.pulls}", f"{many.verified}/{many.pulls}",
         "all  " + ("ok" if one.verified == one.pulls and many.verified == many.pulls else "MISSED")],
        ["bucket complete after pulls (s)", f"{one.upload_lag_s:.2f}", f"{many.upload_lag_s:.2f}", ""],
        ["peak RSS per node (MB)", rss(one), rss(many), ""],
    ]
    kind = "fleet" if many.fleet else "no fleet"
    header = (f"{many.pulls} concurrent cold pulls, s3, one new bucket each", "1 node",
              f"{many.nodes} nodes ({kind})", "target")
    failures = [f"FAILED: {failure}" for failure in [*one.failures, *many.failures]]
    return [*_table(header, rows, "<>><"), *failures]


def render(single: dict[str, Single] | None, one: ScaleOut, many: ScaleOut, image: Image, repeat: int,
           busy: str) -> str:
    size = sum(blob.size for blob in image.blobs.values())
    sizes = " + ".join(f"{layer.size / MB:.0f}" for layer in image.layers)
    title = (f"s3_bench: image {size / MB:.0f} MB in {len(image.layers)} layers ({sizes} MB), "
             f"{os.cpu_count()} CPUs ({busy} busy before start), regcache {git_revision()}")
    first = [*render_single(single, size, repeat), ""] if single is not None else []
    return "\n".join([title, *first, *render_scale_out(one, many)])


def _rounded(value: object) -> object:
    """Floats to 3 decimals, in nested lists and dicts (seconds and ratios; bytes stay exact)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def as_json(single: dict[str, Single] | None, one: ScaleOut, many: ScaleOut, image: Image,
            args: argparse.Namespace, busy: str, elapsed: float) -> dict[str, object]:
    median = statistics.median
    figures: dict[str, object] = {
        "bench": "s3_bench", "date": date.today().isoformat(), "revision": git_revision(),
        "cpus": os.cpu_count(), "busy_before_start": busy, "elapsed_s": round(elapsed, 1),
        "args": {"size_mb": args.size_mb, "repeat": args.repeat, "nodes": args.nodes,
                 "concurrency": args.concurrency, "fleet": not args.no_fleet, "skip_single": args.skip_single},
        "image": {"bytes": sum(blob.size for blob in image.blobs.values()),
                  "layers": [layer.size for layer in image.layers]},
        "scale_out": {
            name: {**asdict(out), "target_upstream_per_image": out.target, "target_met": out.target_met}
            for name, out in (("one_node", one), ("nodes", many))},
    }
    if single is not None:
        fs, s3 = single["filesystem"], single["s3"]
        figures["single_node"] = {
            "filesystem": asdict(fs), "s3": asdict(s3),
            "cold_ratio_s3_over_fs": median(s3.cold_s) / median(fs.cold_s),
            "warm_ratio_s3_over_fs": median(s3.warm_s) / median(fs.warm_s),
        }
    return figures


# -- main ----------------------------------------------------------------------------------------


def start_nodes(names: Sequence[str], root: Path, upstream: RegistryServer, swift: SwiftS3Server, bucket: str,
                fleet: bool, monitor: RssMonitor, started: list) -> list[S3Node]:
    """New s3 nodes on ``bucket`` (in one fleet if ``fleet``), started and watched; stopped by the caller."""
    nodes = [S3Node(root / f"node-{name}", upstream, swift, name=name, bucket=bucket, fleet=fleet) for name in names]
    for node in nodes:
        started.append(node)
        node.configure()
        node.start()
        monitor.watch(node.name, pid_of(node))
    if fleet and len(nodes) > 1:
        time.sleep(HEARTBEAT_INTERVAL * 2)  # every node reads the others' heartbeats
    return nodes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200, help="image size in MB (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="cold + warm rounds per backend (default 3)")
    parser.add_argument("--nodes", type=int, default=3, help="s3 nodes of the scale-out run (default 3)")
    parser.add_argument("--concurrency", type=int, default=12,
                        help="simultaneous cold pulls, through one node and then split across --nodes (default 12)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--no-fleet", action="store_true",
                        help="scale-out nodes outside a fleet (each downloads on its own: up to N x upstream bytes)")
    parser.add_argument("--skip-single", action="store_true",
                        help="skip the one-node filesystem vs s3 rounds: only the scale-out runs")
    args = parser.parse_args(argv)
    if args.size_mb < 1 or args.repeat < 1 or args.concurrency < 2 or not 2 <= args.nodes <= 16:
        parser.error("--size-mb and --repeat must be at least 1, --concurrency at least 2, --nodes from 2 to 16")
    signal.signal(signal.SIGTERM, exit_on_signal)
    began = time.monotonic()
    busy = machine_busy()

    root = Path(tempfile.mkdtemp(prefix="regcache-s3-bench-"))
    monitor = RssMonitor()
    started: list[Cache | RegistryServer | SwiftS3Server] = []
    try:
        upstream = RegistryServer.anonymous(root / "upstream")
        started.append(upstream)
        upstream.start(timeout=START_TIMEOUT)
        swift = SwiftS3Server(root / "swift")
        started.append(swift)
        swift.start(timeout=START_TIMEOUT)
        os.environ.update(s3_env(swift))  # the nodes inherit it: their env:// secrets
        os.environ[FLEET_SECRET_VAR] = secrets.token_urlsafe(32)
        progress(f"upstream on {upstream.host}, Swift on {swift.endpoint} (started in {swift.startup_seconds:.1f} s); "
                 f"building and pushing {args.size_mb} MB")
        monitor.start()
        single: dict[str, Single] | None = None
        if not args.skip_single:
            image = build_image(layer_sizes(args.size_mb), seed=f"s3-bench-{args.size_mb}")
            push_image(image, upstream, REPOSITORY, TAG)
            fs_node = FilesystemNode(root / "fs-node", upstream)
            s3_node = S3Node(root / "s3-node", upstream, swift)
            caches: list[Cache] = [fs_node, s3_node]
            started += caches
            for node in (fs_node, s3_node):
                node.configure()
                node.start()
                monitor.watch(node.name, pid_of(node))
            bench = Bench(root, upstream, caches, image, monitor, args.size_mb)
            single = single_node(bench, swift, args.repeat)
            for node in (fs_node, s3_node):
                node.stop()

        # one image for both scale-out runs: each on a new bucket with new nodes, so every blob is cold
        image = build_image(layer_sizes(args.size_mb), seed=f"s3-bench-{args.size_mb}-scale-out")
        push_image(image, upstream, REPOSITORY, TAG)  # the tag moves to the new image
        bench = Bench(root, upstream, [], image, monitor, args.size_mb)
        progress(f"scale-out: {args.concurrency} concurrent cold pulls through one node")
        alone = start_nodes(["one-node"], root, upstream, swift, swift.create_bucket(), False, monitor, started)
        one = scale_out(bench, swift, alone, args.concurrency)
        alone[0].stop()
        kind = "no fleet" if args.no_fleet else "a fleet"
        progress(f"scale-out: the same pulls split over {args.nodes} nodes on a new bucket, in {kind}")
        names = [f"node-{chr(ord('a') + i)}" for i in range(args.nodes)]
        nodes = start_nodes(names, root, upstream, swift, swift.create_bucket(), not args.no_fleet, monitor, started)
        many = scale_out(bench, swift, nodes, args.concurrency)

        elapsed = time.monotonic() - began
        print(render(single, one, many, image, args.repeat, busy), flush=True)
        print(f"run time {elapsed:.0f} s", flush=True)
        if args.json:
            figures = _rounded(as_json(single, one, many, image, args, busy, elapsed))
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return 0 if one.verified == one.pulls and many.verified == many.pulls else 1
    except (BenchError, SwiftError, FileNotFoundError) as exc:
        print(f"s3_bench: {exc}", file=sys.stderr)
        return 1
    finally:
        monitor.stop()
        stop_all(started, root, "s3_bench")


if __name__ == "__main__":
    sys.exit(main())
