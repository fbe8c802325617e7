"""bench/anchor_bench.py: its wrk figures are read right, a failing wrk run is no figure, and a tiny run
prints every figure for both servers as JSON. The figures themselves are never asserted (the bench's job)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.anchor_bench import BenchError, missing_tools, parse_wrk, run_wrk

ROOT = Path(__file__).resolve().parent.parent

#: what Debian's wrk 4.1.0 printed for `wrk --latency -c 8 -t 2 -d 1s` against a server answering 404
WRK_404 = """\
Running 1s test @ http://127.0.0.1:18777/nope
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    21.36ms   39.46ms 197.48ms   87.29%
    Req/Sec   341.94    310.86     1.21k    82.35%
  Latency Distribution
     50%    6.02ms
     75%   10.56ms
     90%   83.69ms
     99%  165.98ms
  598 requests in 1.10s, 303.67KB read
  Non-2xx or 3xx responses: 598
Requests/sec:    541.37
Transfer/sec:    274.92KB
"""


def test_wrk_output_is_read_with_its_units():
    result = parse_wrk(WRK_404)
    assert (result.requests_per_s, result.p50_ms, result.p99_ms) == (541.37, 6.02, 165.98)
    assert (result.requests, result.non_2xx, result.socket_errors) == (598, 598, 0)

    other_units = (WRK_404.replace("6.02ms", "880.00us").replace("165.98ms", "1.20s")
                   .replace("  Non-2xx or 3xx responses: 598\n",
                            "  Socket errors: connect 0, read 2, write 0, timeout 5\n"))
    result = parse_wrk(other_units)
    assert result.p50_ms == pytest.approx(0.88)
    assert result.p99_ms == pytest.approx(1200.0)
    assert (result.non_2xx, result.socket_errors) == (0, 7)


def test_wrk_output_without_latency_distribution_is_an_error():
    without = "\n".join(line for line in WRK_404.splitlines() if "%" not in line or "Latency" in line)
    with pytest.raises(BenchError, match="50% latency"):
        parse_wrk(without)


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"no","detail":null}]}'
        try:
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except ConnectionError:  # wrk closes its connections when its time is up, answers in flight or not
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def not_found_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2/x/blobs/sha256:0"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)")
def test_a_wrk_run_answered_with_errors_is_not_a_figure(not_found_server):
    """A server that answers 404 fast would look fast: the bench refuses the run instead."""
    with pytest.raises(BenchError, match="non-2xx answers"):
        run_wrk(not_found_server, connections=4, threads=1, duration=1, headers={})


@pytest.mark.slow
@pytest.mark.skipif(bool(missing_tools()), reason="; ".join(missing_tools()))
def test_a_tiny_run_prints_every_figure_for_both_servers():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "anchor_bench.py"), "--blob-mb", "4", "--readers", "2,3",
         "--pulls", "2", "--rounds", "2", "--connections", "8", "--duration", "1", "--repeat", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bench"] == "anchor_bench"
    expected = {"peak_rss_2_readers_mb", "idle_rss_2_readers_mb", "peak_rss_3_readers_mb", "idle_rss_3_readers_mb",
                "blob_mbps", "manifest_rps", "manifest_p50_ms", "manifest_p99_ms", "blob4k_rps", "blob4k_p50_ms",
                "blob4k_p99_ms", "cold_pulls_s", "warm_pulls_s", "cold_warm_ratio"}
    cpu = {f"{phase}_{who}_cpu_s" for phase in ("cold", "warm") for who in ("server", "clients")}
    assert set(report["figures"]) == expected | cpu
    for key, figure in report["figures"].items():
        if key in cpu:  # a tiny phase may take less than a clock tick of a server's CPU
            assert figure["anchor"] >= 0 and figure["regcache"] >= 0, (key, figure)
            continue
        assert figure["anchor"] > 0 and figure["regcache"] > 0, (key, figure)
        assert figure["ratio"] == pytest.approx(figure["regcache"] / figure["anchor"], rel=0.01, abs=0.002), key
    for server in ("anchor", "regcache"):  # skopeo itself takes more than a tick to copy an image
        assert report["figures"]["cold_clients_cpu_s"][server] > 0
    # the peak of a phase is at least the idle RSS it started from (VmHWM is reset to it)
    for readers in (2, 3):
        for server in ("anchor", "regcache"):
            peak = report["figures"][f"peak_rss_{readers}_readers_mb"][server]
            assert peak >= report["figures"][f"idle_rss_{readers}_readers_mb"][server]
    assert set(report["targets"]) == {"blob_mbps", "manifest_rps", "manifest_p99_ms", "blob4k_rps", "blob4k_p99_ms",
                                      "cold_warm_ratio"}  # no RSS target for 2 or 3 readers
    assert all(isinstance(target["met"], bool) for target in report["targets"].values())
    assert report["settings"]["small_blob_bytes"] == 4119
    assert "regcache / anchor" in result.stdout
    assert re.search(r"bare blocking-sendfile server, best of 1: \d+ MB/s", result.stdout), result.stdout
