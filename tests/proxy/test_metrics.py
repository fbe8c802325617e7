"""Prometheus metrics: requests, hits, misses, stale serves, bytes, upstream errors, latency, cache size."""

from __future__ import annotations

import re
import time

import httpx

from tests.helpers.commands import ServeProcess
from tests.helpers.metrics import sample


def test_metrics_follow_pulls(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("metered", f"{server}/library/*", "lib/*")
    image = push_image(anonymous_registry, "library/metered", "1", layers=[100_000])
    for i in range(2):
        skopeo.copy_to_oci(f"{regcache.host}/lib/metered:1", tmp_path / str(i), "1")
    regcache.settle()  # the cache's size counts what is stored
    anonymous_registry.stop()
    with regcache.http() as http:
        assert http.get("/v2/lib/metered/manifests/1").headers["x-regcache-stale"] == "1"
        text = http.get("/metrics").text
    layer_bytes = sum(b.size for b in image.blobs.values())
    assert sample(text, "regcache_misses_total", rule="metered") >= 3  # manifest, config, layer
    assert sample(text, "regcache_hits_total", rule="metered") >= 3
    assert sample(text, "regcache_stale_serves_total", rule="metered") == 1
    assert sample(text, "regcache_bytes_fetched_total", rule="metered") == layer_bytes
    assert sample(text, "regcache_bytes_served_total", rule="metered") >= 2 * layer_bytes
    assert sample(text, "regcache_upstream_errors_total", rule="metered", upstream=server,
                  kind="UpstreamUnreachable") >= 1
    assert sample(text, "regcache_request_duration_seconds_count", rule="metered", kind="blob") >= 4
    assert sample(text, "regcache_cache_size_bytes") == layer_bytes
    assert sample(text, "regcache_requests_total", rule="metered", kind="manifest", result="stale") == 1


def test_metrics_on_their_own_address(home, keyring_env):
    process = ServeProcess(home, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", env=keyring_env)
    try:
        for _ in range(100):
            found = [m.group(1) for line in process.lines if (m := re.search(r"metrics on (\S+)", line))]
            if found:
                break
            time.sleep(0.05)
        metrics_url = found[0]
        assert "# HELP regcache_requests_total" in httpx.get(metrics_url).text
        assert httpx.get(f"{process.url}/metrics").status_code == 404  # not beside the registry API
    finally:
        assert process.terminate()[0] == 0


def test_every_event_moves_the_series_of_its_rule_kind_and_result():
    """The series an event moves are looked up once per rule, kind and result: later events of the same kind add
    to the same series, and each outcome keeps to its own counters."""
    from regcache.proxy.core.models import JOINED_DOWNLOAD, PullEvent, Result
    from regcache.proxy.pull.metrics import ProxyMetrics

    metrics = ProxyMetrics()

    def event(rule: str | None, kind: str, result: Result, size: int, detail: str | None = None) -> PullEvent:
        return PullEvent("127.0.0.1", "GET", kind, "app", "ref", result, 200, rule, size, 20.0, detail)

    for _ in range(3):
        metrics.observe(event("a", "blob", Result.HIT, 100))
        metrics.observe(event("a", "blob", Result.MISS, 1000))
        metrics.observe(event("a", "blob", Result.MISS, 7, JOINED_DOWNLOAD))  # fetched once, for another request
        metrics.observe(event("b", "manifest", Result.STALE, 10))
        metrics.observe(event(None, "manifest", Result.ERROR, 0))
    text = metrics.exposition().decode()
    for line in ['regcache_requests_total{kind="blob",result="hit",rule="a"} 3.0',
                 'regcache_requests_total{kind="blob",result="miss",rule="a"} 6.0',
                 'regcache_requests_total{kind="manifest",result="error",rule="-"} 3.0',
                 'regcache_hits_total{rule="a"} 3.0', 'regcache_misses_total{rule="a"} 6.0',
                 'regcache_stale_serves_total{rule="b"} 3.0',
                 'regcache_bytes_served_total{rule="a"} 3321.0', 'regcache_bytes_served_total{rule="b"} 30.0',
                 'regcache_bytes_fetched_total{rule="a"} 3000.0',
                 'regcache_request_duration_seconds_count{kind="blob",rule="a"} 9.0']:
        assert line in text, line
    assert 'regcache_bytes_served_total{rule="-"}' not in text  # an error serves no bytes
    assert 'regcache_hits_total{rule="b"}' not in text and 'regcache_bytes_fetched_total{rule="b"}' not in text
