"""Two `regcache serve` nodes on one S3 bucket (Swift + s3api): what one fetched, the other serves.

Real parts only: Debian's docker-registry upstream, Swift as the store, two real `regcache serve`
processes with their own state directories, skopeo as the client.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import httpx
import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.settings import make_s3_storage
from tests.helpers.commands import ServeProcess, regcache_executable
from tests.proxy.fronts import CORRUPT, PASS, THROTTLE, FaultyFront
from tests.registries.skopeo import assert_pulled

from .nodes import (
    ACCESS_KEY_VAR,
    SECRET_KEY_VAR,
    blob_key,
    bucket_keys,
    configure_node,
    configure_nodes,
    pending_uploads,
    s3_env,
    wait_for_image_in_bucket,
    write_object,
)

MiB = 1024 * 1024


def _node_env(keyring_env: dict[str, str], swift, **overrides: str) -> dict[str, str]:
    return {**keyring_env, **s3_env(swift, **overrides)}


def test_a_pull_through_node_a_is_served_by_node_b_with_the_upstream_stopped(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo):
    # one layer over the part size (a multipart upload), one small (a plain PUT), plus the config blob
    image = push_image(anonymous_registry, "acme/shared", "1.0", layers=[20 * MiB, 300_000])
    homes = configure_nodes(tmp_path, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url,
                            {"shared": "acme/shared"})
    env = _node_env(keyring_env, swift_s3)
    node_a = ServeProcess(homes["a"], "--listen", "127.0.0.1:0", env=env)
    node_b = ServeProcess(homes["b"], "--listen", "127.0.0.1:0", env=env)
    try:
        assert_pulled(skopeo.copy_to_oci(f"{node_a.host}/shared:1.0", tmp_path / "via-a", "1.0"), "1.0", image)
        _, keys = wait_for_image_in_bucket(swift_s3, s3_bucket, image.blobs)
        assert f"regcache/manifests/sha256/{image.digest.partition(':')[2]}" in keys
        # the bucket holds the blobs, not node A's disk
        assert [p for p in (homes["a"] / "blobs").rglob("*") if p.is_file()] == []

        anonymous_registry.stop()
        assert_pulled(skopeo.copy_to_oci(f"{node_b.host}/shared:1.0", tmp_path / "via-b", "1.0"), "1.0", image)
        with httpx.Client(base_url=node_b.url, timeout=30) as http:  # byte for byte, also by digest and range
            big = image.layers[0]
            assert http.get(f"/v2/shared/blobs/{big.digest}").content == big.data
            ranged = http.get(f"/v2/shared/blobs/{big.digest}", headers={"Range": "bytes=100-199"})
            assert ranged.status_code == 206 and ranged.content == big.data[100:200]
            manifest = http.get(f"/v2/shared/manifests/{image.digest}",
                                headers={"Accept": image.media_type})
            assert manifest.status_code == 200 and manifest.content == image.manifest
            # a repository no rule of node B covers stays unknown: the bucket is no open proxy
            assert http.get(f"/v2/other/blobs/{big.digest}").status_code == 404
    finally:
        for node in (node_a, node_b):
            code, output = node.terminate()
            assert code == 0, output
            assert "Traceback" not in output, output


def test_wrong_s3_credentials_fail_the_start_naming_the_endpoint(tmp_path, keyring_env, swift_s3, s3_bucket,
                                                                anonymous_registry):
    home = tmp_path / "node"
    configure_node(home, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url, {"app": "acme/app"})
    wrong_secret = "not-the-secret-" + hashlib.sha256(b"x").hexdigest()[:12]
    started = time.monotonic()
    result = subprocess.run([regcache_executable(), "--home", str(home), "serve", "--listen", "127.0.0.1:0"],
                            env={**_system_env(), **_node_env(keyring_env, swift_s3, secret_key=wrong_secret)},
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, output
    assert swift_s3.endpoint in error_lines[0] and "credentials" in error_lines[0], error_lines[0]
    assert wrong_secret not in output and swift_s3.secret_key not in output
    assert "Traceback" not in output, output
    assert time.monotonic() - started < 30


def test_kill_9_mid_upload_leaves_no_object_and_gc_aborts_the_upload(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/crashy", "1", layers=[30 * MiB])
    layer = image.layers[0]
    front = FaultyFront(anonymous_registry.url, THROTTLE).start()
    front.throttle_chunk = 256 * 1024  # ~12 MB/s: the 30 MB layer takes ~2.5 s
    homes = configure_nodes(tmp_path, swift_s3, s3_bucket, front.host, front.url, {"crashy": "acme/crashy"})
    env = _node_env(keyring_env, swift_s3)
    node_a = ServeProcess(homes["a"], "--listen", "127.0.0.1:0", env=env)
    node_b: ServeProcess | None = None
    puller = None
    try:
        puller = subprocess.Popen([skopeo.binary, "--insecure-policy", "copy", "--src-tls-verify=false",
                                   "--src-no-creds", f"docker://{node_a.host}/crashy:1",
                                   f"oci:{tmp_path / 'interrupted'}:1"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not pending_uploads(swift_s3, s3_bucket):  # a first part is in: the upload is under way
            assert time.monotonic() < deadline, "node A never started uploading the layer"
            time.sleep(0.05)
        node_a.proc.kill()  # SIGKILL: no abort, no cleanup
        node_a.proc.wait()
        puller.kill()
        puller.wait()
        key = blob_key(layer.digest)
        stale = pending_uploads(swift_s3, s3_bucket)
        assert [u["Key"] for u in stale] == [key]
        assert key not in bucket_keys(swift_s3, s3_bucket), "a partial object became visible"

        front.mode = PASS
        node_b = ServeProcess(homes["b"], "--listen", "127.0.0.1:0", env=env)
        with httpx.Client(base_url=node_b.url, timeout=60) as http:
            head = http.head(f"/v2/crashy/blobs/{layer.digest}")
            assert head.status_code == 200 and int(head.headers["content-length"]) == layer.size
            assert http.get(f"/v2/crashy/blobs/{layer.digest}").content == layer.data

        gc = subprocess.run([regcache_executable(), "--home", str(homes["a"]), "gc", "-o", "json"],
                            env={**_system_env(), **env}, capture_output=True, text=True, timeout=60)
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert stale[0]["UploadId"] in gc.stdout
        remaining = [u["UploadId"] for u in pending_uploads(swift_s3, s3_bucket)]
        assert stale[0]["UploadId"] not in remaining
        assert key in bucket_keys(swift_s3, s3_bucket)  # node B's verified copy
    finally:
        if puller is not None and puller.poll() is None:
            puller.kill()
            puller.wait()
        for node in (node_a, node_b):
            if node is not None and node.proc.poll() is None:
                node.terminate()
        front.stop()


def _fill_the_bucket_through(home, env: dict[str, str], reference: str, image, skopeo, tmp_path, swift, bucket) -> None:
    """Pull ``reference`` through a node on ``home`` (verified), wait until the bucket holds it, stop the node."""
    node = ServeProcess(home, "--listen", "127.0.0.1:0", env=env)
    try:
        tag = reference.rpartition(":")[2]
        assert_pulled(skopeo.copy_to_oci(f"{node.host}/{reference}", tmp_path / "filled", tag), tag, image)
        wait_for_image_in_bucket(swift, bucket, image.blobs)
    finally:
        node.terminate()


def _system_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_a_bucket_that_fails_while_serving_costs_storage_not_pulls(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/lost", "1", layers=[10 * MiB, 50_000])
    home = tmp_path / "node"
    configure_node(home, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url, {"lost": "acme/lost"})
    node = ServeProcess(home, "--listen", "127.0.0.1:0", env=_node_env(keyring_env, swift_s3))
    try:
        swift_s3.delete_bucket(s3_bucket)  # the store loses the bucket after the node checked it at start
        assert_pulled(skopeo.copy_to_oci(f"{node.host}/lost:1", tmp_path / "pulled", "1"), "1", image)
        deadline = time.monotonic() + 10
        while not any("could not store" in line for line in node.lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        metrics = httpx.get(f"{node.url}/metrics").text  # operators alert on this, not on log lines
        failed = {line.split("}")[0] for line in metrics.splitlines()
                  if line.startswith("regcache_bucket_errors_total{") and not line.endswith(" 0.0")}
        assert 'regcache_bucket_errors_total{action="start an upload"' in failed or \
            'regcache_bucket_errors_total{action="write an object"' in failed, failed
    finally:
        code, output = node.terminate()
    assert code == 0, output
    assert "could not store" in output and swift_s3.endpoint in output, output
    assert "Traceback" not in output, output
    assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []  # no temporary file left behind


def test_warm_on_one_node_fills_the_bucket_for_every_node(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/warmed", "2", layers=[9 * MiB, 70_000])
    homes = configure_nodes(tmp_path, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url,
                            {"warmed": "acme/warmed"})
    env = {**_system_env(), **_node_env(keyring_env, swift_s3)}
    warm = subprocess.run([regcache_executable(), "--home", str(homes["a"]), "warm", "warmed:2"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert {blob_key(digest) for digest in image.blobs} <= set(bucket_keys(swift_s3, s3_bucket))
    anonymous_registry.stop()
    node_b = ServeProcess(homes["b"], "--listen", "127.0.0.1:0", env=_node_env(keyring_env, swift_s3))
    try:
        assert_pulled(skopeo.copy_to_oci(f"{node_b.host}/warmed:2", tmp_path / "pulled", "2"), "2", image)
    finally:
        code, output = node_b.terminate()
    assert code == 0, output


def test_a_corrupted_download_leaves_nothing_in_the_bucket(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image):
    image = push_image(anonymous_registry, "acme/corrupt", "1", layers=[12 * MiB])
    layer = image.layers[0]
    front = FaultyFront(anonymous_registry.url, CORRUPT).start()  # flips one byte in the middle of each blob
    home = tmp_path / "node"
    configure_node(home, swift_s3, s3_bucket, front.host, front.url, {"corrupt": "acme/corrupt"})
    node = ServeProcess(home, "--listen", "127.0.0.1:0", env=_node_env(keyring_env, swift_s3))
    try:
        with httpx.Client(base_url=node.url, timeout=60) as http, \
                pytest.raises(httpx.RemoteProtocolError):  # cut short: the last byte waits for the digest
            http.get(f"/v2/corrupt/blobs/{layer.digest}")
        deadline = time.monotonic() + 10  # the upload of the first part(s) is aborted, not completed
        while pending_uploads(swift_s3, s3_bucket) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pending_uploads(swift_s3, s3_bucket) == []
        assert blob_key(layer.digest) not in bucket_keys(swift_s3, s3_bucket)
    finally:
        code, output = node.terminate()
        front.stop()
    assert code == 0, output
    assert "does not match" in output, output.splitlines()


def test_manifest_bytes_altered_in_the_bucket_are_never_served(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/tamper", "1", layers=[50_000])
    homes = configure_nodes(tmp_path, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url,
                            {"tamper": "acme/tamper"})
    env = _node_env(keyring_env, swift_s3)
    _fill_the_bucket_through(homes["a"], env, "tamper:1", image, skopeo, tmp_path, swift_s3, s3_bucket)
    key = f"regcache/manifests/sha256/{image.digest.partition(':')[2]}"
    forged = image.manifest.replace(b'"schemaVersion"', b'"schemaVersion" ', 1)
    write_object(swift_s3, s3_bucket, key, forged)
    anonymous_registry.stop()
    node_b = ServeProcess(homes["b"], "--listen", "127.0.0.1:0", env=env)
    try:
        with httpx.Client(base_url=node_b.url, timeout=30) as http:
            for reference in ("1", image.digest):
                response = http.get(f"/v2/tamper/manifests/{reference}", headers={"Accept": image.media_type})
                assert response.status_code >= 400 and response.content != forged, reference
                assert response.json()["errors"][0]["code"] in ("UNAVAILABLE", "MANIFEST_UNKNOWN")
    finally:
        code, output = node_b.terminate()
    assert code == 0, output
    assert "do not match the digest" in output


def test_what_one_rules_credentials_fetched_is_not_served_through_a_rule_without_them(
        tmp_path, keyring_env, swift_s3, s3_bucket, basic_auth_registry, push_image, skopeo):
    image = push_image(basic_auth_registry, "acme/secret", "1", layers=[60_000])
    user, password = basic_auth_registry.credentials
    home = tmp_path / "node"
    control = ControlPlane.open(home)
    try:
        control.add_upstream(basic_auth_registry.host, basic_auth_registry.url, "both")
        control.set_secret("keyring://regcache-tests/user", user)
        control.set_secret("keyring://regcache-tests/password", password)
        control.create_credential_set("acme-login", basic_auth_registry.host, "keyring://regcache-tests/user",
                                      "keyring://regcache-tests/password")
        control.create_rule("secret-app", f"{basic_auth_registry.host}/acme/secret", "secret", "acme-login")
        control.create_rule("open-anonymous", f"{basic_auth_registry.host}/*", "open/*")
        control.set_storage(make_s3_storage(swift_s3.endpoint, s3_bucket, f"env://{ACCESS_KEY_VAR}",
                                            f"env://{SECRET_KEY_VAR}", region=swift_s3.region))
    finally:
        control.close()
    node = ServeProcess(home, "--listen", "127.0.0.1:0", env=_node_env(keyring_env, swift_s3))
    try:
        assert_pulled(skopeo.copy_to_oci(f"{node.host}/secret:1", tmp_path / "allowed", "1"), "1", image)
        wait_for_image_in_bucket(swift_s3, s3_bucket, image.blobs)
        with httpx.Client(base_url=node.url, timeout=30) as http:
            # the same upstream repository through the anonymous rule: the upstream must decide, and refuses
            manifest = http.get(f"/v2/open/acme/secret/manifests/{image.digest}", headers={"Accept": image.media_type})
            assert manifest.status_code == 401, manifest.text
            layer = image.layers[0]
            blob = http.get(f"/v2/open/acme/secret/blobs/{layer.digest}")
            assert blob.status_code == 401 and layer.data not in blob.content, blob.text
            assert http.get("/v2/open/acme/secret/manifests/1").status_code == 401
    finally:
        code, output = node.terminate()
    assert code == 0, output


def test_blob_bytes_altered_in_the_bucket_are_not_served_whole(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo):
    image = push_image(anonymous_registry, "acme/bitrot", "1", layers=[3 * MiB])
    layer = image.layers[0]
    homes = configure_nodes(tmp_path, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url,
                            {"bitrot": "acme/bitrot"})
    env = _node_env(keyring_env, swift_s3)
    _fill_the_bucket_through(homes["a"], env, "bitrot:1", image, skopeo, tmp_path, swift_s3, s3_bucket)
    rotten = bytearray(layer.data)
    rotten[len(rotten) // 2] ^= 0xFF
    write_object(swift_s3, s3_bucket, blob_key(layer.digest), bytes(rotten))
    node_b = ServeProcess(homes["b"], "--listen", "127.0.0.1:0", env=env)
    try:
        with httpx.Client(base_url=node_b.url, timeout=30) as http, pytest.raises(httpx.RemoteProtocolError):
            http.get(f"/v2/bitrot/blobs/{layer.digest}")  # cut short: the last chunk waits for the digest
    finally:
        code, output = node_b.terminate()
    assert code == 0, output
    assert "does not match its digest" in output


def test_a_purge_on_one_node_removes_the_shared_tag_and_links_so_no_node_brings_it_back(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image, skopeo):
    """After an upstream served bad content: `regcache cache purge` drops the tag and the links from the
    bucket too; node B (that never saw the image) then cannot serve it from the shared store, it goes upstream."""
    image = push_image(anonymous_registry, "acme/purged", "1.0", layers=[300_000])
    homes = configure_nodes(tmp_path, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url,
                            {"purged": "acme/purged"})
    env = _node_env(keyring_env, swift_s3)
    node_a = ServeProcess(homes["a"], "--listen", "127.0.0.1:0", env=env)
    try:
        assert_pulled(skopeo.copy_to_oci(f"{node_a.host}/purged:1.0", tmp_path / "via-a", "1.0"), "1.0", image)
        _, keys = wait_for_image_in_bucket(swift_s3, s3_bucket, image.blobs)
        shared = {k for k in keys if k.startswith(("regcache/tags/", "regcache/links/"))}
        assert any("/tags/" in k and k.endswith("/1.0") for k in shared) and any("/links/" in k for k in shared)

        purged = subprocess.run([regcache_executable(), "--home", str(homes["a"]), "cache", "purge", "-r", "purged",
                                 "-y", "-o", "json"], capture_output=True, text=True, timeout=120,
                                env={**os.environ, **env})
        assert purged.returncode == 0, purged.stderr
        report = json.loads(purged.stdout)
        assert report["tags"] == ["1.0"] and report["sharedError"] is None
        assert report["sharedEntriesRemoved"] == len(shared)
        left = set(bucket_keys(swift_s3, s3_bucket))
        assert not left & shared  # no tag, no link of the purged repository stays in the bucket

        anonymous_registry.stop()
        node_b = ServeProcess(homes["b"], "--listen", "127.0.0.1:0", env=env)
        try:
            with httpx.Client(base_url=node_b.url, timeout=30) as http:
                gone = http.get("/v2/purged/manifests/1.0", headers={"Accept": image.media_type})
                by_digest = http.get(f"/v2/purged/manifests/{image.digest}", headers={"Accept": image.media_type})
            # the upstream is down and the bucket no longer vouches for the purged content: not served
            assert gone.status_code >= 400 and by_digest.status_code >= 400, (gone.text, by_digest.text)
        finally:
            code, output = node_b.terminate()
            assert code == 0 and "Traceback" not in output, output
    finally:
        code, output = node_a.terminate()
        assert code == 0 and "Traceback" not in output, output


def test_warm_hits_ask_the_bucket_for_a_blob_once_and_again_only_after_it_vanished(
        tmp_path, keyring_env, swift_s3, s3_bucket, anonymous_registry, push_image):
    """A warm hit costs one GET, not a HEAD and a GET (the node remembers what it saw in the bucket for a while);
    an object deleted behind its back (another node's eviction) costs one cut transfer, then a new download."""
    image = push_image(anonymous_registry, "acme/warm", "1", layers=[300_000])
    layer = image.layers[0]
    home = tmp_path / "node"
    configure_node(home, swift_s3, s3_bucket, anonymous_registry.host, anonymous_registry.url, {"warm": "acme/warm"})
    node = ServeProcess(home, "--listen", "127.0.0.1:0", env=_node_env(keyring_env, swift_s3))
    hex_digest = layer.digest.partition(":")[2]

    def asked(method: str) -> int:  # the Swift proxy's access log: one line per request on the object
        return sum(1 for line in swift_s3.log_text().splitlines()
                   if f" {method} " in line and hex_digest in line and "segments" not in line)

    try:
        with httpx.Client(base_url=node.url, timeout=30) as http:
            url = f"/v2/warm/blobs/{layer.digest}"
            assert http.get(url).content == layer.data  # the miss: downloaded and uploaded to the bucket
            wait_for_image_in_bucket(swift_s3, s3_bucket, [layer.digest])
            heads, gets = asked("HEAD"), asked("GET")
            for _ in range(5):
                assert http.get(url).content == layer.data
            assert asked("HEAD") == heads  # served from the bucket without asking whether it is there
            assert asked("GET") >= gets + 5

            status, _ = swift_s3.swift("DELETE", s3_bucket, blob_key(layer.digest))
            assert status == 204
            pulls = len(anonymous_registry.blob_gets(digest=layer.digest))
            with pytest.raises(httpx.HTTPError):  # the transfer is cut before any byte: the client retries
                http.get(url).read()
            retried = http.get(url)
            assert retried.status_code == 200 and retried.content == layer.data  # downloaded again
            assert len(anonymous_registry.blob_gets(digest=layer.digest)) == pulls + 1
    finally:
        code, output = node.terminate()
    assert code == 0, output
    assert "Traceback" not in output, output
