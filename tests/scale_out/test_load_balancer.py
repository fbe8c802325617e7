"""Eight clients pull one image at once through nginx, round robin over two `regcache serve` nodes on one bucket.

Real parts only: Debian's docker-registry upstream (behind a counting pass-through front), Swift as the
store, two real `regcache serve` processes with their own state directories, nginx as the load balancer
(configured as docs/scale-out.md says), skopeo as the client.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.helpers.commands import ServeProcess
from tests.proxy.fronts import PASS, FaultyFront
from tests.registries.skopeo import OciLayout, assert_pulled

from .nodes import configure_nodes, s3_env, wait_for_image_in_bucket

MiB = 1024 * 1024
CLIENTS = 8
NODES = ("a", "b")


def test_eight_concurrent_pulls_through_nginx_over_two_nodes(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo, load_balancer):
    # one layer over the 8 MiB part size (a multipart upload), two under it (plain PUTs), plus the config
    image = push_image(anonymous_registry, "acme/balanced", "1.0", layers=[12 * MiB, 3 * MiB, 200_000])
    anonymous_registry.clear_log()  # count the pulls' blob GETs only
    front = FaultyFront(anonymous_registry.url, PASS).start()  # counts the blob GETs reaching the upstream
    homes = configure_nodes(tmp_path, swift_s3, s3_bucket, front.host, front.url, {"balanced": "acme/balanced"}, NODES)
    env = {**keyring_env, **s3_env(swift_s3)}
    nodes: dict[str, ServeProcess] = {}
    try:
        for name, home in homes.items():
            nodes[name] = ServeProcess(home, "--listen", "127.0.0.1:0", env=env)
        balancer = load_balancer([node.host for node in nodes.values()])

        ready = threading.Barrier(CLIENTS)

        def pull(index: int) -> OciLayout:
            ready.wait(timeout=30)  # all eight start together: every blob is a miss somewhere at first
            return skopeo.copy_to_oci(f"{balancer.host}/balanced:1.0", tmp_path / f"pull-{index}", "1.0")

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            layouts = list(pool.map(pull, range(CLIENTS)))
        pull_seconds = time.monotonic() - started
        for layout in layouts:
            assert_pulled(layout, "1.0", image)

        # both nodes answered clients, blobs included, and nginx passed no failure on
        # (skopeo tries TLS first: nginx logs each hello on its plain port as a 400 with no request line)
        entries = [entry for entry in balancer.access_log() if entry.is_request]
        assert entries, balancer.error_log()
        per_node = balancer.requests_per_backend()
        blobs_per_node = balancer.requests_per_backend(path_contains="/blobs/")
        assert set(per_node) == {node.host for node in nodes.values()}, per_node
        assert set(blobs_per_node) == {node.host for node in nodes.values()}, blobs_per_node
        assert [e for e in entries if e.status >= 500 or len(e.upstreams) != 1] == [], balancer.error_log()

        _, keys = wait_for_image_in_bucket(swift_s3, s3_bucket, image.blobs)
        assert f"regcache/manifests/sha256/{image.digest.partition(':')[2]}" in keys
        for home in homes.values():  # the bucket holds the blobs, not the nodes' disks
            assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []

        # per-node single flight: at most one upstream download per blob per node
        per_blob = Counter(digest for _, digest in (entry.blob for entry in anonymous_registry.blob_gets()))
        manifest_gets = len(anonymous_registry.requests("GET", path_prefix="/v2/acme/balanced/manifests/"))
        print(f"\n{CLIENTS} concurrent pulls through nginx over {len(NODES)} nodes in {pull_seconds:.1f} s; "
              f"upstream blob GETs: {front.blob_gets} for {len(image.blobs)} blobs "
              f"(per blob: {sorted(per_blob.values(), reverse=True)}); upstream manifest GETs: {manifest_gets}; "
              f"requests per node: {dict(per_node)}")
        assert set(per_blob) == set(image.blobs)
        assert max(per_blob.values()) <= len(NODES), per_blob
        assert front.blob_gets == sum(per_blob.values()) <= len(NODES) * len(image.blobs)
        assert manifest_gets <= len(NODES)  # per-node single flight for manifests too
    finally:
        outputs = {}
        for name, node in nodes.items():
            if node.proc.poll() is None:
                outputs[name] = node.terminate()
        front.stop()
    for name, (code, output) in outputs.items():
        assert code == 0, f"node {name}:\n{output}"
        assert "Traceback" not in output, f"node {name}:\n{output}"
