"""A fleet downloads each cold blob once: two `regcache serve` nodes on one bucket, heartbeating in it, each
asking the owner of a digest to stream its single download (docs/scale-out.md, "A fleet").

Real parts only: docker-registry upstream (behind a counting pass-through front), Swift, two `regcache serve`
processes, nginx round robin, skopeo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from regcache.proxy.core.fleet import SIGNATURE_HEADER, signature
from regcache.proxy.upstream.peer import peer_target
from tests.helpers.commands import ServeProcess, regcache_executable
from tests.proxy.fronts import PASS, THROTTLE, FaultyFront
from tests.registries.server import free_port
from tests.registries.skopeo import OciLayout, assert_pulled

from .nodes import FLEET_SECRET, FLEET_SECRET_VAR, configure_nodes, join, metric, s3_env, wait_for_members

MiB = 1024 * 1024
CLIENTS = 8


@pytest.fixture
def fleet(tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry):
    """Start nodes (name -> extra rules) on one bucket, in one fleet; stopped (and checked) at teardown."""
    front = FaultyFront(anonymous_registry.url, PASS).start()  # counts the blob GETs reaching the upstream
    env = {**keyring_env, **s3_env(swift_s3), FLEET_SECRET_VAR: FLEET_SECRET}
    nodes: dict[str, ServeProcess] = {}
    homes: dict[str, Path] = {}
    configured: dict[str, dict[str, str]] = {}

    def start(rules: dict[str, str], names=("a", "b")) -> dict[str, ServeProcess]:
        homes.update(configure_nodes(tmp_path, swift_s3, s3_bucket, front.host, front.url, rules, names))
        for name in names:
            port = free_port()
            join(homes[name], port)
            nodes[name] = ServeProcess(homes[name], "--listen", f"127.0.0.1:{port}", env=env)
            configured[name] = rules
        # each node sees the members configured as it is (the others it leaves out, as it should)
        wait_for_members(swift_s3, s3_bucket, len(nodes), nodes=[
            (node.url, sum(configured[other] == configured[name] for other in nodes)) for name, node in nodes.items()])
        return nodes

    start.front = front  # type: ignore[attr-defined]
    start.homes = homes  # type: ignore[attr-defined]
    yield start
    outputs = {name: node.terminate() for name, node in nodes.items() if node.proc.poll() is None}
    front.stop()
    for name, (code, output) in outputs.items():
        assert code == 0, f"node {name}:\n{output}"
        assert "Traceback" not in output, f"node {name}:\n{output}"


def test_eight_pulls_over_two_nodes_download_each_blob_once(tmp_path, fleet, anonymous_registry, push_image,
                                                            skopeo, load_balancer):
    image = push_image(anonymous_registry, "acme/fleet", "1.0", layers=[12 * MiB, 3 * MiB, 200_000])
    anonymous_registry.clear_log()
    nodes = fleet({"fleet": "acme/fleet"})
    balancer = load_balancer([node.host for node in nodes.values()])
    ready = threading.Barrier(CLIENTS)

    def pull(index: int) -> OciLayout:
        ready.wait(timeout=30)  # all start together: every blob is cold on both nodes
        return skopeo.copy_to_oci(f"{balancer.host}/fleet:1.0", tmp_path / f"pull-{index}", "1.0")

    with ThreadPoolExecutor(CLIENTS) as pool:
        layouts = list(pool.map(pull, range(CLIENTS)))
    for layout in layouts:
        assert_pulled(layout, "1.0", image)
    per_blob = Counter(digest for _, digest in (entry.blob for entry in anonymous_registry.blob_gets()))
    print(f"\nupstream blob GETs per blob: {dict(per_blob)}; peer fetches: "
          f"{ {n: metric(node, 'regcache_fleet_peer_fetches_total') for n, node in nodes.items()} }")
    assert set(per_blob) == set(image.blobs) and set(per_blob.values()) == {1}, per_blob  # once for the fleet
    assert fleet.front.blob_gets == len(image.blobs)
    assert sum(metric(node, "regcache_fleet_peer_fetches_total") for node in nodes.values()) >= 1
    assert sum(metric(node, "regcache_fleet_own_downloads_total") for node in nodes.values()) == 0


def test_a_dead_owner_is_passed_over_and_a_lone_node_still_serves(tmp_path, fleet, anonymous_registry, push_image,
                                                                 skopeo):
    image = push_image(anonymous_registry, "acme/alone", "1.0", layers=[2 * MiB, 100_000, 50_000, 30_000])
    nodes = fleet({"alone": "acme/alone"})
    nodes["a"].proc.send_signal(signal.SIGKILL)  # no goodbye: its heartbeat stays in the bucket
    nodes["a"].proc.wait(10)
    started = time.monotonic()
    assert_pulled(skopeo.copy_to_oci(f"{nodes['b'].host}/alone:1.0", tmp_path / "alone", "1.0"), "1.0", image)
    assert time.monotonic() - started < 10
    # the blobs the dead node owned were downloaded here, and counted so
    per_blob = Counter(digest for _, digest in (entry.blob for entry in anonymous_registry.blob_gets()))
    assert set(per_blob) == set(image.blobs)
    assert metric(nodes["b"], "regcache_fleet_peer_fetches_total") == 0


def test_nodes_configured_differently_download_on_their_own(tmp_path, fleet, anonymous_registry, push_image,
                                                            skopeo):
    image = push_image(anonymous_registry, "acme/split", "1.0", layers=[1 * MiB, 100_000, 60_000])
    nodes = fleet({"split": "acme/split"}, names=("a",))
    nodes.update(fleet({"split": "acme/split", "other": "acme/other"}, names=("b",)))  # another fingerprint
    for name, node in nodes.items():
        assert_pulled(skopeo.copy_to_oci(f"{node.host}/split:1.0", tmp_path / name, "1.0"), "1.0", image)
        assert metric(node, "regcache_fleet_peer_fetches_total") == 0


def test_fleet_status_shows_the_members_and_the_owner_of_a_digest(fleet, keyring_env, swift_s3,
                                                                   anonymous_registry, push_image):
    nodes = fleet({"status": "acme/status"})
    env = {**os.environ, **keyring_env, **s3_env(swift_s3)}
    digest = "sha256:" + "ab" * 32
    shown = subprocess.run([regcache_executable(), "--home", str(fleet.homes["a"]), "fleet", "status", "--digest",
                            digest, "-o", "json"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert sorted(r["address"] for r in rows) == sorted(n.url for n in nodes.values())
    assert all(r["live"] == "yes" and r["sameConfiguration"] == "yes" for r in rows), rows
    assert [r["owner"] for r in rows].count("yes") == 1
    assert sum("(this node)" in r["nodeId"] for r in rows) == 1
    table = subprocess.run([regcache_executable(), "--home", str(fleet.homes["b"]), "fleet", "status"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert table.returncode == 0 and "HEARTBEAT" in table.stdout and "Traceback" not in table.stderr


def test_the_peer_endpoint_answers_only_signed_requests_for_its_own_sources(fleet, anonymous_registry, push_image):
    image = push_image(anonymous_registry, "acme/peer", "1.0", layers=[100_000])
    nodes = fleet({"peer": "acme/peer"})
    digest = image.layers[0].digest
    source = f"anonymous/{fleet.front.host}/acme/peer"
    target = peer_target("peer", digest, source)
    url = nodes["a"].url + target
    assert httpx.get(url).status_code == 401
    forged = signature("not-the-secret", "GET", target, "node-x", int(time.time()))
    assert httpx.get(url, headers={SIGNATURE_HEADER: forged}).status_code == 401
    stale = signature(FLEET_SECRET, "GET", target, "node-x", int(time.time()) - 3600)
    assert httpx.get(url, headers={SIGNATURE_HEADER: stale}).status_code == 401
    other = peer_target("peer", digest, "anonymous/elsewhere.example/acme/peer")
    signed_other = signature(FLEET_SECRET, "GET", other, "node-x", int(time.time()))
    assert httpx.get(nodes["a"].url + other, headers={SIGNATURE_HEADER: signed_other}).status_code == 409
    signed = signature(FLEET_SECRET, "GET", target, "node-x", int(time.time()))
    answer = httpx.get(url, headers={SIGNATURE_HEADER: signed, "Host": "anything.example"})
    assert answer.status_code == 200 and answer.content == image.layers[0].data
    # the peer path is for peers: a client token-less /v2/ request still goes through the usual checks
    assert httpx.get(nodes["a"].url + "/v2/", headers={"Host": "anything.example"}).status_code == 403


def test_an_owner_dying_mid_download_costs_a_retry_never_wrong_bytes(fleet, keyring_env, swift_s3,
                                                                     anonymous_registry, push_image):
    image = push_image(anonymous_registry, "acme/slow", "1.0", layers=[4 * MiB])
    nodes = fleet({"slow": "acme/slow"})
    fleet.front.mode = THROTTLE  # the upstream sends 256 KiB every 0.2 s: the owner is still downloading
    fleet.front.throttle_delay = 0.2
    layer = image.layers[0]
    env = {**os.environ, **keyring_env, **s3_env(swift_s3)}
    shown = subprocess.run([regcache_executable(), "--home", str(fleet.homes["a"]), "fleet", "status", "--digest",
                            layer.digest, "-o", "json"], capture_output=True, text=True, env=env, timeout=60)
    owner_url = next(r["address"] for r in json.loads(shown.stdout) if r["owner"] == "yes")
    owner = next(name for name, node in nodes.items() if node.url == owner_url)
    other = nodes["b" if owner == "a" else "a"]

    received = bytearray()
    with pytest.raises(httpx.HTTPError), httpx.stream("GET", f"{other.url}/v2/slow/blobs/{layer.digest}",
                                                      timeout=30) as answer:
        assert answer.status_code == 200 and answer.headers["content-length"] == str(layer.size)
        for chunk in answer.iter_raw():
            received += chunk
            if len(received) >= 512 * 1024 and nodes[owner].proc.poll() is None:
                nodes[owner].proc.send_signal(signal.SIGKILL)  # the owner dies while it streams
    assert len(received) < layer.size and layer.data.startswith(bytes(received))  # cut short, never wrong
    fleet.front.mode = PASS
    started = time.monotonic()
    again = httpx.get(f"{other.url}/v2/slow/blobs/{layer.digest}", timeout=30)
    assert again.status_code == 200 and again.content == layer.data
    assert time.monotonic() - started < 10
    assert metric(other, "regcache_fleet_own_downloads_total") >= 1
