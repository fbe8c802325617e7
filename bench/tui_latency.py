"""TUI responsiveness while the embedded proxy streams a large blob.

Runs the real `regcache tui` under tmux (80x24), pulls a 300 MB blob through its embedded proxy
from a loopback docker-registry with curl, and meanwhile measures the time from a key press
(switching blades) to the screen showing the new blade, polling `tmux capture-pane`.

Run from the repository root: python bench/tui_latency.py [--size-mb 300] [--presses 40]
Target: key press to screen update under 100 ms while the blob streams.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.registries.client import push_image  # noqa: E402
from tests.registries.images import build_image  # noqa: E402
from tests.registries.server import RegistryServer, free_port  # noqa: E402

BLADES = (("2", "Cache rules"), ("3", "Credentials"), ("5", "Upstreams"), ("1", "Overview"))


def regcache() -> str:
    return shutil.which("regcache") or str(Path(sys.executable).parent / "regcache")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def blade_title(session: str) -> str:
    """The title line of the shown blade (row 2 of the screen, right of the navigation)."""
    lines = tmux("capture-pane", "-p", "-t", session).splitlines()
    return lines[1][16:].strip() if len(lines) > 1 else ""


def press_and_time(session: str, key: str, title: str, timeout: float = 5.0) -> float:
    start = time.perf_counter()
    tmux("send-keys", "-t", session, key)
    while time.perf_counter() - start < timeout:
        if blade_title(session).startswith(title):
            return time.perf_counter() - start
        time.sleep(0.002)
    raise RuntimeError(f"the {title} blade did not appear within {timeout} s")


def measure(session: str, presses: int) -> list[float]:
    samples = []
    for i in range(presses):
        key, title = BLADES[i % len(BLADES)]
        samples.append(press_and_time(session, key, title))
        time.sleep(0.05)
    return samples


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[max(int(len(ms) * 0.95) - 1, 0)]
    return f"median {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   max {ms[-1]:6.1f} ms   (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--presses", type=int, default=40)
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
        # Keep the proxy streaming for the whole measurement: the first transfer is the cold
        # pull-through, the following ones are served from the cache.
        streaming = threading.Event()
        transfers: list[tuple[int, float]] = []

        def stream_until_done() -> None:
            while not streaming.is_set():
                out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                                      url], capture_output=True, text=True, timeout=600).stdout.split()
                transfers.append((int(out[0]), float(out[1])))

        streamer = threading.Thread(target=stream_until_done)
        streamer.start()
        time.sleep(0.3)
        try:
            busy = measure(session, args.presses)
        finally:
            streaming.set()
            streamer.join()
        print(f"key press -> screen update, idle:              {summary(idle)}")
        print(f"key press -> screen update, {args.size_mb} MB streaming: {summary(busy)}   (target < 100 ms)")
        for i, (size, seconds) in enumerate(transfers):
            kind = "cold (pull-through)" if i == 0 else "warm (cache hit)"
            print(f"  transfer {i + 1}, {kind}: {size / 1e6:.0f} MB in {seconds:.1f} s")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
