"""A bounded soak of `regcache serve`: 64 concurrent clients, mixed hits and misses, loopback only.

Starts an upstream docker-registry with many small images and `regcache serve` in front of it, then
runs N concurrent clients for a fixed time. Each client pulls an image like a registry client does
(manifest by tag, then its config and layer blobs); most pulls are of images already cached (hits),
some of images never pulled before (misses that go upstream). Prints requests, failures, latency
percentiles, throughput and the server's peak RSS. Figures are printed, not asserted.

Run from the repository root: python bench/soak_bench.py [--clients 64] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.registries.client import push_image  # noqa: E402
from tests.registries.images import build_image  # noqa: E402
from tests.registries.server import RegistryServer, free_port  # noqa: E402

OCI = "application/vnd.oci.image.manifest.v1+json"


def regcache() -> str:
    return shutil.which("regcache") or str(Path(sys.executable).parent / "regcache")


class RssSampler(threading.Thread):
    """Peak resident memory of a process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.05)


async def client(base: str, images: list[str], cold: list[str], deadline: float, latencies: list[float],
                 failures: list[str], counts: dict[str, int], seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        while time.monotonic() < deadline:
            # about one pull in ten is of an image nobody pulled yet
            name = cold.pop() if cold and rng.random() < 0.1 else rng.choice(images)
            started = time.monotonic()
            try:
                manifest = await http.get(f"/v2/{name}/manifests/1", headers={"Accept": OCI})
                manifest.raise_for_status()
                doc = manifest.json()
                for descriptor in [doc["config"], *doc["layers"]]:
                    blob = await http.get(f"/v2/{name}/blobs/{descriptor['digest']}")
                    blob.raise_for_status()
                    if len(blob.content) != descriptor["size"]:
                        raise ValueError(f"short blob {descriptor['digest']}")
                counts["pulls"] += 1
                counts["requests"] += 1 + 1 + len(doc["layers"])
            except Exception as exc:  # counted and reported, never hidden
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
            latencies.append(time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--images", type=int, default=40, help="images cached before the soak")
    parser.add_argument("--cold-images", type=int, default=200, help="images pulled for the first time during it")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="regcache-soak-"))
    upstream = RegistryServer.anonymous(work / "upstream")
    serve = None
    try:
        upstream.start()
        names = [f"library/soak{i}" for i in range(args.images + args.cold_images)]
        for i, name in enumerate(names):
            push_image(build_image([64 * 1024, 8 * 1024], seed=f"soak-{i}"), upstream, name, "1")
        home = work / "home"
        env = {**os.environ, "REGCACHE_HOME": str(home)}
        for command in (["upstream", "add", "--login-server", upstream.host, "--url", upstream.url, "--auth",
                         "anonymous"],
                        ["cache", "create", "-n", "soak-all", "-s", f"{upstream.host}/library/*", "-t", "lib/*"]):
            subprocess.run([regcache(), *command], env=env, check=True, capture_output=True)
        port = free_port()
        serve = subprocess.Popen([regcache(), "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{base}/v2/").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        warm = [n.replace("library/", "lib/") for n in names[:args.images]]
        cold = [n.replace("library/", "lib/") for n in names[args.images:]]
        for name in warm:  # cache the warm set first
            doc = httpx.get(f"{base}/v2/{name}/manifests/1", headers={"Accept": OCI}).json()
            for d in [doc["config"], *doc["layers"]]:
                httpx.get(f"{base}/v2/{name}/blobs/{d['digest']}")
        sampler = RssSampler(serve.pid)
        sampler.start()
        idle_rss = 0
        time.sleep(0.2)
        idle_rss = sampler.peak_kb
        latencies: list[float] = []
        failures: list[str] = []
        counts = {"pulls": 0, "requests": 0}
        deadline = time.monotonic() + args.seconds
        started = time.monotonic()

        async def soak() -> None:
            await asyncio.gather(*(client(base, warm, cold, deadline, latencies, failures, counts, seed)
                                   for seed in range(args.clients)))

        asyncio.run(soak())
        elapsed = time.monotonic() - started
        sampler.done.set()
        sampler.join()
        lat = sorted(latencies)

        def pct(p: float) -> float:
            return lat[min(int(len(lat) * p), len(lat) - 1)] * 1000 if lat else 0.0

        print(f"soak: {args.clients} clients for {elapsed:.0f} s against regcache serve (loopback)")
        print(f"  image pulls        {counts['pulls']:>8}   ({counts['pulls'] / elapsed:.0f}/s)")
        print(f"  requests           {counts['requests']:>8}   ({counts['requests'] / elapsed:.0f}/s)")
        print(f"  cold images pulled {args.cold_images - len(cold):>8}   (misses that went upstream)")
        print(f"  failed pulls       {len(failures):>8}")
        print(f"  pull latency       p50 {pct(0.5):.1f} ms   p99 {pct(0.99):.1f} ms   max {pct(1.0):.1f} ms")
        print(f"  server RSS         idle {idle_rss / 1024:.0f} MB   peak {sampler.peak_kb / 1024:.0f} MB")
        for failure in failures[:10]:
            print(f"  failure: {failure}")
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=30)
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
