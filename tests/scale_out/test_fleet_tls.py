"""Fleet peers over TLS: nodes serving https (``serve --tls-cert``) ask each other over https and verify the
owner's certificate against the ``fleet-ca`` setting, never skipping verification (docs/scale-out.md, "A fleet").

Real parts only: a private CA (trustme) issuing each node's certificate, two `regcache serve` nodes on one Swift
bucket, a docker-registry upstream, skopeo. Which node owns a blob is computed from node ids the test sets, so the
pull goes through the node that must ask its peer.
"""

from __future__ import annotations

import os
import re
import ssl
import time

import httpx
import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.fleet import Member, ranked
from regcache.proxy.core.settings import FLEET_NODE_ID_SETTING
from tests.helpers.commands import ServeProcess
from tests.registries.server import free_port
from tests.registries.skopeo import assert_pulled
from tests.registries.tls import PrivateCa

from .nodes import bucket_keys, configure_nodes, s3_env

MiB = 1024 * 1024
SECRET_VAR = "REGCACHE_TEST_FLEET_SECRET"
FLEET_SECRET = "the-fleet-secret-of-the-tls-tests-0123456789"
NODE_IDS = {"a": "node-a-0000000000", "b": "node-b-1111111111"}


class TlsNode:
    """A `regcache serve --tls-cert` node, and how to read its metrics trusting the test CA."""

    def __init__(self, process: ServeProcess, ca: PrivateCa) -> None:
        self.process = process
        self.ca = ca

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.process.url}/metrics", verify=self.ca.client_context()).text
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


@pytest.fixture
def tls_fleet(tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry):
    """``start(rules, fleet_ca=True)``: nodes a and b serving https with certificates of one private CA, in one
    fleet; stopped (and checked for tracebacks) at teardown."""
    ca = PrivateCa(tmp_path / "ca")
    # the CA is trusted only where the test puts it (fleet-ca): nothing from the environment
    env = {key: value for key, value in os.environ.items() if key not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env.update({**keyring_env, **s3_env(swift_s3), SECRET_VAR: FLEET_SECRET})
    nodes: dict[str, TlsNode] = {}

    def start(rules: dict[str, str], *, fleet_ca: bool = True, scheme: str = "https") -> dict[str, TlsNode]:
        homes = configure_nodes(tmp_path, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url, rules)
        for name, home in homes.items():
            port = free_port()
            cert, key = ca.issue(f"node-{name}", "127.0.0.1")
            control = ControlPlane.open(home)
            try:
                control.set_setting("fleet-address", f"{scheme}://127.0.0.1:{port}")
                control.set_setting("fleet-secret", f"env://{SECRET_VAR}")
                if fleet_ca:
                    control.set_setting("fleet-ca", str(ca.bundle))
                control.store.set_setting(FLEET_NODE_ID_SETTING, NODE_IDS[name])  # known ids: known owners
            finally:
                control.close()
            process = ServeProcess(home, "--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert),
                                   "--tls-key", str(key), env=env)
            assert process.url.startswith("https://")
            nodes[name] = TlsNode(process, ca)
        return nodes

    start.bucket = s3_bucket  # type: ignore[attr-defined]
    yield start
    for name, node in nodes.items():
        if node.process.proc.poll() is None:
            code, output = node.process.terminate()
            assert code == 0, f"node {name}:\n{output}"
            assert "Traceback" not in output, f"node {name}:\n{output}"


def wait_for_heartbeats(swift, bucket: str, nodes: dict[str, TlsNode], timeout: float = 20) -> None:
    """Until every node's heartbeat is in the bucket and every node sees all of them live (it chooses owners from
    what it sees: a node that has not read the other's beat yet owns everything, and asks no one)."""
    deadline = time.monotonic() + timeout
    while len([k for k in bucket_keys(swift, bucket) if "/fleet/members/" in k]) < len(nodes):
        assert time.monotonic() < deadline, "the nodes did not heartbeat"
        time.sleep(0.2)
    for name, node in nodes.items():
        while node.metric("regcache_fleet_members") < len(nodes):
            assert time.monotonic() < deadline, f"node {name} does not see the other members"
            time.sleep(0.2)


def asking_node(digest: str) -> str:
    """The node that does NOT own ``digest`` (it asks the other for it)."""
    members = [Member(node_id, "", "", "", 0) for node_id in NODE_IDS.values()]
    owner = ranked(digest, members)[0].node_id
    return next(name for name, node_id in NODE_IDS.items() if node_id != owner)


def test_peers_serving_https_verify_each_other_against_the_fleet_ca(tmp_path, tls_fleet, swift_s3,
                                                                     anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/tls", "1.0", layers=[3 * MiB])
    layer = image.layers[0].digest
    anonymous_registry.clear_log()
    nodes = tls_fleet({"tls": "acme/tls"})
    wait_for_heartbeats(swift_s3, tls_fleet.bucket, nodes)
    via = nodes[asking_node(layer)]
    assert_pulled(skopeo.copy_to_oci(f"{via.process.host}/tls:1.0", tmp_path / "pulled", "1.0"), "1.0", image)
    # the layer came from its owner over https, verified against the fleet CA: one upstream download
    assert [e.blob for e in anonymous_registry.blob_gets(digest=layer)] == [("acme/tls", layer)]
    assert via.metric("regcache_fleet_peer_fetches_total") >= 1
    assert via.metric("regcache_fleet_own_downloads_total") == 0


def test_without_the_fleet_ca_a_peer_certificate_is_not_trusted_and_the_node_downloads_itself(
        tmp_path, tls_fleet, swift_s3, anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/untrusted", "1.0", layers=[2 * MiB])
    layer = image.layers[0].digest
    nodes = tls_fleet({"untrusted": "acme/untrusted"}, fleet_ca=False)  # the system store does not know the CA
    wait_for_heartbeats(swift_s3, tls_fleet.bucket, nodes)
    via = nodes[asking_node(layer)]
    assert_pulled(skopeo.copy_to_oci(f"{via.process.host}/untrusted:1.0", tmp_path / "pulled", "1.0"), "1.0",
                  image)
    assert via.metric("regcache_fleet_peer_fetches_total") == 0  # verification was not skipped
    assert via.metric("regcache_fleet_own_downloads_total") >= 1
    assert len(anonymous_registry.blob_gets(digest=layer)) == 1  # its own download, not the owner's
    log = "".join(via.process.lines)
    assert "its TLS certificate was not accepted (CERTIFICATE_VERIFY_FAILED)" in log, log
    assert "fleet-ca" in log


def test_a_node_serving_https_with_an_http_fleet_address_joins_no_fleet(tls_fleet, swift_s3):
    nodes = tls_fleet({"plain": "acme/plain"}, scheme="http")
    for node in nodes.values():
        log = "".join(node.process.lines)
        assert "not joining the fleet: fleet-address is http://127.0.0.1" in log, log
        assert "serves https" in log
    assert not [k for k in bucket_keys(swift_s3, tls_fleet.bucket) if "/fleet/members/" in k]


def test_fleet_ca_is_checked_like_a_ca_bundle(home, tmp_path, monkeypatch):
    control = ControlPlane.open(home)
    try:
        with pytest.raises(ValidationError, match="does not exist"):
            control.set_setting("fleet-ca", str(tmp_path / "missing.pem"))
        (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        with pytest.raises(ValidationError):
            control.set_setting("fleet-ca", str(tmp_path / "key.pem"))
        assert control.settings()["fleet-ca"] == ""  # nothing stored
        ca = PrivateCa(tmp_path / "ca")
        monkeypatch.chdir(tmp_path)
        assert control.set_setting("fleet-ca", "ca/ca.pem") == str(ca.bundle)  # kept absolute
        assert control.settings()["fleet-ca"] == str(ca.bundle)
        ssl.create_default_context(cafile=control.settings()["fleet-ca"])  # a usable CA file
    finally:
        control.close()
