"""One client token on two `regcache serve` nodes behind nginx: round robin never refuses the client.

Each node gets the same token from `regcache token create ... --password-stdin` (the operator's secret
manager, here a pipe), as docs/scale-out.md step 4 says. Real parts only: Debian's docker-registry
upstream, Swift as the shared store, two real `regcache serve` processes with their own state
directories, nginx round robin in front, skopeo as the client.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers.commands import ServeProcess, regcache_executable
from tests.registries.skopeo import SkopeoError, assert_pulled

from .nodes import configure_node, s3_env

NODES = ("a", "b")
PULLS = 4
PASSWORD = "ci-Shared:Secret-from-the-vault-1f2e"  # a ':' too: Basic splits at the first one only


def _create_token(home: Path, env: dict[str, str], password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([regcache_executable(), "--home", str(home), "token", "create", "-n", "ci-puller",
                           "--repository", "*", "--expiry", "30d", "--password-stdin"],
                          input=password + "\n", capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env})


def test_one_token_created_on_every_node_pulls_through_nginx(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo, load_balancer):
    image = push_image(anonymous_registry, "acme/private", "1.0", layers=[300_000, 40_000])
    homes = {name: tmp_path / name for name in NODES}
    env = {**keyring_env, **s3_env(swift_s3)}
    for home in homes.values():
        configure_node(home, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url,
                       {"private": "acme/private"})
        created = _create_token(home, env, PASSWORD)
        assert created.returncode == 0, created.stderr
        assert "token ci-puller created with the password from stdin" in created.stderr
        assert PASSWORD not in created.stdout + created.stderr
        assert [p for p in home.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()] == []

    nodes: dict[str, ServeProcess] = {}
    try:
        for name, home in homes.items():
            nodes[name] = ServeProcess(home, "--listen", "127.0.0.1:0", env=env)
        balancer = load_balancer([node.host for node in nodes.values()])
        creds = ("ci-puller", PASSWORD)

        # each node on its own knows the token (and, having one, refuses anonymous requests)
        for node in nodes.values():
            assert httpx.get(f"{node.url}/v2/", auth=creds).status_code == 200
            assert httpx.get(f"{node.url}/v2/").status_code == 401

        for index in range(PULLS):  # sequential: round robin hands each pull's requests to both nodes
            layout = skopeo.copy_to_oci(f"{balancer.host}/private:1.0", tmp_path / f"pull-{index}", "1.0",
                                        credentials=creds)
            assert_pulled(layout, "1.0", image)

        entries = [entry for entry in balancer.access_log() if entry.is_request]
        content = [entry for entry in entries if "/manifests/" in entry.uri or "/blobs/" in entry.uri]
        assert content and all(entry.status == 200 for entry in content), [(e.uri, e.status) for e in content]
        # both nodes answered authenticated manifest and blob requests (anonymous ones get 401)
        per_node = balancer.requests_per_backend()
        served = {entry.backend for entry in content}
        print(f"\n{PULLS} authenticated pulls through nginx; requests per node: {dict(per_node)}; "
              f"manifest and blob requests per node: "
              f"{ {host: sum(e.backend == host for e in content) for host in served} }")
        assert set(per_node) == served == {node.host for node in nodes.values()}, per_node
        assert [e for e in entries if e.status >= 500 or len(e.upstreams) != 1] == [], balancer.error_log()

        seen = len(entries)
        with pytest.raises(SkopeoError) as wrong:
            skopeo.copy_to_oci(f"{balancer.host}/private:1.0", tmp_path / "wrong", "1.0",
                               credentials=("ci-puller", PASSWORD[:-1] + "X"))
        assert "unauthorized: invalid token name or password" in wrong.value.stderr
        refused = [entry for entry in balancer.access_log() if entry.is_request][seen:]
        assert refused and {entry.status for entry in refused} == {401}, refused
    finally:
        outputs = {name: node.terminate() for name, node in nodes.items() if node.proc.poll() is None}
    for name, (code, output) in outputs.items():
        assert code == 0, f"node {name}:\n{output}"
        assert "Traceback" not in output, f"node {name}:\n{output}"
        assert PASSWORD not in output, f"node {name} logged the password"
