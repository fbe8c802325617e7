"""A fleet of three: manifests and tag revalidations follow the fleet's ownership as blobs do, an owner killed
mid-download costs a client retry and never wrong bytes, and a node serves at once what another just fetched
even with the upstream gone (docs/scale-out.md, "A fleet").

Real parts only: docker-registry upstream (behind a counting pass-through front, or an nginx front throttling
it with ``limit_rate``), Swift s3api, three `regcache serve` processes, nginx round robin, skopeo. Upstream
requests are counted in the registry's own access log.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.fleet import HEARTBEAT_INTERVAL, VALIDATED_HEADER, Member, manifest_key, ranked
from regcache.proxy.core.oci import MANIFEST_TYPES, OCI_MANIFEST
from tests.helpers.commands import ServeProcess, regcache_executable
from tests.proxy.fronts import PASS, FaultyFront
from tests.registries.server import RegistryServer, free_port
from tests.registries.skopeo import OciLayout, SkopeoError, assert_pulled

from .nginx import NginxBalancer, nginx_binary
from .nodes import (
    FLEET_SECRET,
    FLEET_SECRET_VAR,
    bucket_keys,
    configure_nodes,
    join,
    metric,
    pending_uploads,
    read_object,
    s3_env,
    wait_for_members,
    write_object,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
PULLS = 12
NAMES = ("a", "b", "c")


class Fleet:
    """Three nodes on one bucket, in one fleet, reading from ``upstream`` (host, URL); stopped at teardown."""

    def __init__(self, tmp_path: Path, env: dict[str, str], swift, bucket: str) -> None:
        self.tmp_path, self.env, self.swift, self.bucket = tmp_path, env, swift, bucket
        self.nodes: dict[str, ServeProcess] = {}
        self.homes: dict[str, Path] = {}

    def start(self, upstream_host: str, upstream_url: str, rules: dict[str, str],
              names: tuple[str, ...] = NAMES) -> dict[str, ServeProcess]:
        self.homes = configure_nodes(self.tmp_path, self.swift, self.bucket, upstream_host, upstream_url, rules, names)
        for name in names:
            port = free_port()
            join(self.homes[name], port)
            self.nodes[name] = ServeProcess(self.homes[name], "--listen", f"127.0.0.1:{port}", env=self.env)
        wait_for_members(self.swift, self.bucket, len(names), nodes=[(self.nodes[n].url, len(names)) for n in names])
        return self.nodes

    def owner_of(self, digest: str) -> str:
        """The name of the node that owns ``digest``, as `regcache fleet status` says."""
        shown = subprocess.run([regcache_executable(), "--home", str(self.homes["a"]), "fleet", "status", "--digest",
                                digest, "-o", "json"], capture_output=True, text=True,
                               env={**os.environ, **self.env}, timeout=60)
        assert shown.returncode == 0, shown.stderr
        address = next(r["address"] for r in json.loads(shown.stdout) if r["owner"] == "yes")
        return next(name for name, node in self.nodes.items() if node.url == address)

    def stop(self) -> dict[str, tuple[int, str]]:
        return {name: node.terminate() for name, node in self.nodes.items() if node.proc.poll() is None}


@pytest.fixture
def three_nodes(tmp_path, keyring_env, swift_s3, s3_bucket):
    fleet = Fleet(tmp_path, {**keyring_env, **s3_env(swift_s3), FLEET_SECRET_VAR: FLEET_SECRET}, swift_s3,
                  s3_bucket)
    yield fleet
    for name, (code, output) in fleet.stop().items():
        assert code == 0, f"node {name}:\n{output}"
        assert "Traceback" not in output, f"node {name}:\n{output}"


@pytest.fixture
def counting_front(anonymous_registry):
    front = FaultyFront(anonymous_registry.url, PASS).start()
    yield front
    front.stop()


def upstream_manifest_requests(registry: RegistryServer, repository: str) -> Counter[tuple[str, str]]:
    """(method, reference) -> how many manifest requests of ``repository`` reached the upstream."""
    return Counter((entry.method, entry.manifest[1]) for entry in registry.access_log()
                   if entry.manifest is not None and entry.manifest[0] == repository)


def blob_bytes(registry: RegistryServer, digests: set[str]) -> int:
    """Bytes of ``digests`` the upstream sent (every blob GET, answered whole or not)."""
    return sum(entry.size for entry in registry.blob_gets(status=None) if entry.blob and entry.blob[1] in digests)


def check_bucket(swift, bucket: str) -> set[str]:
    """Every blob object in the bucket holds exactly the bytes of its digest (no partial object); the digests."""
    found = set()
    for key in bucket_keys(swift, bucket):
        if "/blobs/sha256/" in key:
            digest = "sha256:" + key.rsplit("/", 1)[-1]
            assert "sha256:" + hashlib.sha256(read_object(swift, bucket, key)).hexdigest() == digest, key
            found.add(digest)
    return found


@pytest.mark.parametrize("through", ["nodes", "nginx"])
def test_twelve_cold_pulls_over_three_nodes_fetch_each_blob_and_each_tag_once(
        tmp_path, three_nodes, counting_front, anonymous_registry, push_image, skopeo, load_balancer, through):
    images = {tag: push_image(anonymous_registry, "acme/fleet3", tag, layers=[6 * MiB, 1 * MiB, 150_000 + index])
              for index, tag in enumerate(("1.0", "2.0"))}
    anonymous_registry.clear_log()
    nodes = list(three_nodes.start(counting_front.host, counting_front.url, {"fleet3": "acme/fleet3"}).values())
    hosts = ([node.host for node in nodes] if through == "nodes"  # round robin by the clients themselves
             else [load_balancer([node.host for node in nodes]).host] * len(nodes))
    ready = threading.Barrier(PULLS)

    def pull(index: int) -> tuple[str, OciLayout]:
        tag = ("1.0", "2.0")[index % 2]
        ready.wait(timeout=60)  # all at once: every blob and both tags are cold on every node
        return tag, skopeo.copy_to_oci(f"{hosts[index % 3]}/fleet3:{tag}", tmp_path / f"pull-{index}", tag)

    with ThreadPoolExecutor(PULLS) as pool:
        pulled = list(pool.map(pull, range(PULLS)))
    for tag, layout in pulled:
        assert_pulled(layout, tag, images[tag])
    manifests = upstream_manifest_requests(anonymous_registry, "acme/fleet3")
    ratios = {tag: blob_bytes(anonymous_registry, set(image.blobs)) / sum(b.size for b in image.blobs.values())
              for tag, image in images.items()}
    asked = {name: metric(node, "regcache_fleet_peer_manifests_total")
             for name, node in zip(NAMES, nodes, strict=True)}
    print(f"\n{through}: upstream blob bytes / image {ratios}; upstream manifest requests {dict(manifests)}; "
          f"manifests answered by their owner, per node {asked}")
    for tag in images:
        assert manifests[("GET", tag)] == 1, manifests  # one manifest GET per tag for the whole fleet
        assert ratios[tag] <= 1.05, ratios
    assert sum(asked.values()) >= 1
    assert sum(metric(node, "regcache_fleet_own_manifests_total") for node in nodes) == 0

    # the tags are cached now (freshness 0: every pull revalidates); twelve revalidations at once, on every
    # node, merge into one upstream HEAD (a slow upstream makes them overlap for sure)
    anonymous_registry.clear_log()
    counting_front.manifest_delay = 2.0
    start = threading.Barrier(PULLS)

    def revalidate(index: int) -> httpx.Response:
        start.wait(timeout=30)
        return httpx.get(f"http://{hosts[index % 3]}/v2/fleet3/manifests/1.0",
                         headers={"Accept": ", ".join(MANIFEST_TYPES)}, timeout=60)

    with ThreadPoolExecutor(PULLS) as pool:
        answers = list(pool.map(revalidate, range(PULLS)))
    counting_front.manifest_delay = 0.0
    assert all(a.status_code == 200 and a.content == images["1.0"].manifest for a in answers)
    revalidations = upstream_manifest_requests(anonymous_registry, "acme/fleet3")
    print(f"{through}: upstream manifest requests for {PULLS} concurrent revalidations: {dict(revalidations)}")
    assert sum(revalidations.values()) == 1, revalidations


def nginx_front(tmp_path: Path, registry: RegistryServer, rate: str) -> NginxBalancer:
    """nginx in front of the upstream, sending every answer at ``rate`` (a download stays in flight for seconds)."""
    return NginxBalancer(tmp_path / "throttle", [registry.host], binary=nginx_binary(), limit_rate=rate).start()


def pull_with_retries(skopeo, reference: str, destination: Path, tag: str, attempts: int = 3) -> int:
    """``skopeo copy`` (with its own retries), run again after a failure as a CI job would; the attempts taken."""
    for attempt in range(1, attempts + 1):
        try:
            skopeo.run("copy", "--src-tls-verify=false", "--src-no-creds", "--retry-times", "2",
                       f"docker://{reference}", f"oci:{destination}:{tag}")
            return attempt
        except SkopeoError:
            if attempt == attempts:
                raise
    raise AssertionError("not reached")


def test_the_owner_killed_mid_download_costs_a_retry_never_wrong_bytes_nor_a_partial_object(
        tmp_path, three_nodes, anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/killed", "1.0", layers=[8 * MiB, 200_000])
    front = nginx_front(tmp_path, anonymous_registry, "1m")  # 8 MiB take 8 s upstream
    try:
        nodes = three_nodes.start(front.host, front.url, {"killed": "acme/killed"})
        big = image.layers[0]
        owner = three_nodes.owner_of(big.digest)
        others = [name for name in NAMES if name != owner]
        results: dict[str, int | BaseException] = {}

        def pull(name: str) -> None:
            try:
                results[name] = pull_with_retries(skopeo, f"{nodes[name].host}/killed:1.0", tmp_path / name, "1.0")
            except BaseException as exc:  # reported below
                results[name] = exc

        threads = [threading.Thread(target=pull, args=(name,)) for name in others]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while metric(nodes[owner], "regcache_fleet_peer_serves_total") < 1:  # a member streams from the owner
            assert time.monotonic() < deadline, "no node asked the owner"
            time.sleep(0.1)
        time.sleep(2)  # well into the 8 s download
        nodes[owner].proc.send_signal(signal.SIGKILL)
        nodes[owner].proc.wait(10)
        killed_at = time.monotonic()
        for thread in threads:
            thread.join(180)
        took = time.monotonic() - killed_at
        # the big layer again: by the next owner by hash (the dead one's heartbeat expired), streamed to the
        # other survivor, or by each survivor on its own (the dead owner did not answer)
        gets = [e for e in front.access_log() if e.method == "GET" and big.digest in e.uri]
        taken_over = {name: (metric(nodes[name], "regcache_fleet_own_downloads_total"),
                             metric(nodes[name], "regcache_fleet_peer_fetches_total")) for name in others}
        print(f"\npulls after the owner was killed: attempts {results}, done {took:.1f} s later (the big layer "
              f"takes 8 s at the throttled rate); upstream GETs of it {len(gets)}; own downloads and peer "
              f"fetches per survivor {taken_over}")
        for name in others:
            assert isinstance(results[name], int), results[name]
            assert_pulled(OciLayout(tmp_path / name), "1.0", image)
        assert 2 <= len(gets) <= 3, gets  # the killed download, then one per survivor at most
        assert took < 60
    finally:
        front.stop()
    deadline = time.monotonic() + 30  # the survivors' own uploads complete; the dead owner's stays pending
    while not set(image.blobs) <= check_bucket(three_nodes.swift, three_nodes.bucket):
        assert time.monotonic() < deadline, "the survivors did not store the image"
        time.sleep(0.5)
    check_bucket(three_nodes.swift, three_nodes.bucket)  # every object whole and right, none partial
    print(f"multipart uploads left pending by the killed owner: "
          f"{len(pending_uploads(three_nodes.swift, three_nodes.bucket))}")


def test_with_the_upstream_stopped_right_after_a_pull_the_other_nodes_serve_the_image_at_once(
        tmp_path, three_nodes, counting_front, anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/gone", "1.0", layers=[20 * MiB, 3 * MiB, 100_000])
    nodes = three_nodes.start(counting_front.host, counting_front.url, {"gone": "acme/gone"})
    big = image.layers[0]
    first = three_nodes.owner_of(big.digest)  # it downloads the big layer, and uploads it to the bucket
    others = [name for name in NAMES if name != first]
    # The tightest case: another node asked the moment the first node's client has the last byte, while the
    # upload to the bucket is still completing. It must not need the upstream (which could be down by then).
    with httpx.stream("GET", f"{nodes[first].url}/v2/gone/blobs/{big.digest}", timeout=60) as answer:
        assert answer.status_code == 200 and answer.read() == big.data
    right_after = httpx.get(f"{nodes[others[0]].url}/v2/gone/blobs/{big.digest}", timeout=60)
    assert right_after.status_code == 200 and right_after.content == big.data
    assert len(anonymous_registry.blob_gets(digest=big.digest)) == 1  # not from the upstream again
    print(f"\nright after the last byte, node {others[0]} had the big layer from node {first}'s download: "
          f"{metric(nodes[first], 'regcache_fleet_peer_serves_total') >= 1} (else from the bucket)")

    assert_pulled(skopeo.copy_to_oci(f"{nodes[first].host}/gone:1.0", tmp_path / first, "1.0"), "1.0", image)
    anonymous_registry.stop()  # the upstream is gone the moment the client has its last byte
    stopped = time.monotonic()
    with ThreadPoolExecutor(len(others)) as pool:  # at once, on both other nodes; one attempt each, no retry
        pulls = {name: pool.submit(skopeo.copy_to_oci, f"{nodes[name].host}/gone:1.0", tmp_path / name, "1.0")
                 for name in others}
        uploading = len(pending_uploads(three_nodes.swift, three_nodes.bucket))
        for name, pulled in pulls.items():
            assert_pulled(pulled.result(), "1.0", image)  # a failure here is the window this test is about
    print(f"\nnodes {others} served the image {time.monotonic() - stopped:.1f} s after the upstream stopped; "
          f"multipart uploads still running as they began: {uploading}")
    assert sum(1 for entry in anonymous_registry.blob_gets() if entry.blob and entry.blob[0] == "acme/gone") == \
        len(image.blobs)
    print(f"blobs node {first} streamed to the others: {metric(nodes[first], 'regcache_fleet_peer_serves_total')}; "
          f"manifests it answered for them: {metric(nodes[first], 'regcache_fleet_peer_manifest_serves_total')}")


class ForgingMember:
    """A 'member' anyone with the bucket's keys could announce: answers every peer manifest request with its own
    manifest, digest and media type all consistent, but without the fleet secret to sign the answer."""

    def __init__(self, content: bytes) -> None:
        self.asked: list[str] = []
        member = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                member.asked.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", OCI_MANIFEST)
                self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(content).hexdigest())
                self.send_header(VALIDATED_HEADER, f"{time.time():.3f}")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_member_without_the_fleet_secret_cannot_answer_a_tag(three_nodes, counting_front, swift_s3, s3_bucket,
                                                               anonymous_registry, push_image):
    genuine = push_image(anonymous_registry, "acme/forged", "1.0", layers=[100_000])
    other = push_image(anonymous_registry, "acme/elsewhere", "1.0", layers=[90_000])
    node = three_nodes.start(counting_front.host, counting_front.url, {"forged": "acme/forged"}, names=("a",))["a"]
    key = next(k for k in bucket_keys(swift_s3, s3_bucket) if "/fleet/members/" in k)
    real = Member.from_json(read_object(swift_s3, s3_bucket, key))
    tag_key = manifest_key(f"anonymous/{counting_front.host}/acme/forged", "1.0")
    forger = ForgingMember(other.manifest)  # a real manifest, of another image
    try:
        fake_id = next(f"intruder-{i}" for i in range(1000)  # one the tag's owner would be
                       if ranked(tag_key, [real, Member(f"intruder-{i}", forger.url, "", "", 0)])[0] != real)
        for beat in (1, 2):  # its heartbeat, in the bucket, with the real node's configuration fingerprint
            write_object(swift_s3, s3_bucket, key.rsplit("/", 1)[0] + f"/{fake_id}.json",
                         Member(fake_id, forger.url, real.fingerprint, real.version, beat).to_json())
            time.sleep(HEARTBEAT_INTERVAL * 1.2)
        answer = httpx.get(f"{node.url}/v2/forged/manifests/1.0", headers={"Accept": OCI_MANIFEST}, timeout=30)
    finally:
        forger.stop()
    assert forger.asked, "the node did not take the intruder for the tag's owner"
    assert answer.status_code == 200 and answer.content == genuine.manifest  # from the upstream, not the intruder
    assert metric(node, "regcache_fleet_own_manifests_total") == 1
    refused = 'regcache_fleet_own_manifests_total{reason="peer answer refused"} 1.0'
    assert refused in httpx.get(f"{node.url}/metrics").text
    assert httpx.get(f"{node.url}/v2/forged/manifests/{other.digest}").status_code == 404  # nothing of it kept


def test_with_a_freshness_window_a_tag_is_asked_upstream_once_per_window_for_the_whole_fleet(
        three_nodes, counting_front, anonymous_registry, push_image):
    image = push_image(anonymous_registry, "acme/fresh", "1.0", layers=[50_000])
    homes = configure_nodes(three_nodes.tmp_path, three_nodes.swift, three_nodes.bucket, counting_front.host,
                            counting_front.url, {}, NAMES)  # the nodes' state, to give the rule a window first
    for home in homes.values():
        control = ControlPlane.open(home)
        try:
            control.create_rule("fresh-rule", f"{counting_front.host}/acme/fresh", "fresh", freshness=300)
        finally:
            control.close()
    nodes = list(three_nodes.start(counting_front.host, counting_front.url, {}).values())
    anonymous_registry.clear_log()
    counting_front.manifest_delay = 1.0  # the concurrent requests overlap for sure

    def burst() -> Counter[tuple[str, str]]:
        start = threading.Barrier(PULLS)

        def get(index: int) -> httpx.Response:
            start.wait(timeout=30)
            return httpx.get(f"{nodes[index % 3].url}/v2/fresh/manifests/1.0", headers={"Accept": OCI_MANIFEST},
                             timeout=60)

        with ThreadPoolExecutor(PULLS) as pool:
            assert all(a.status_code == 200 and a.content == image.manifest for a in pool.map(get, range(PULLS)))
        found = upstream_manifest_requests(anonymous_registry, "acme/fresh")
        anonymous_registry.clear_log()
        return found

    cold, warm = burst(), burst()
    print(f"\nupstream manifest requests, 12 cold then 12 warm requests over 3 nodes (300 s window): "
          f"{dict(cold)}, {dict(warm)}")
    assert cold == Counter({("GET", "1.0"): 1})  # one for the fleet, not one per node
    assert warm == Counter()  # every node keeps the owner's confirmation time: fresh everywhere
