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
