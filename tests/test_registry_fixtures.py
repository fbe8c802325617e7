"""Checks that the registry fixtures run real registries that a real client (skopeo) pulls from.

Run with ``python -m pytest -p tests.registries.fixtures tests/test_registry_fixtures.py``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.registries.client import RegistryClient
from tests.registries.fixtures import PushImage, RegistryFactory
from tests.registries.images import MEDIA_TYPES, MediaFamily, build_image
from tests.registries.server import AccessLogEntry, RegistryServer
from tests.registries.skopeo import Skopeo, SkopeoError, assert_pulled


@pytest.fixture(params=["anonymous_registry", "basic_auth_registry", "token_registry"])
def registry(request: pytest.FixtureRequest) -> RegistryServer:
    """Each flavour of registry fixture in turn."""
    server = request.getfixturevalue(request.param)
    assert isinstance(server, RegistryServer)
    return server


@pytest.mark.parametrize(
    ("media_type", "multiarch"),
    [("oci", False), ("docker", False), ("oci", True), ("docker", True)],
)
def test_skopeo_pulls_pushed_images_byte_for_byte(
    registry: RegistryServer,
    push_image: PushImage,
    skopeo: Skopeo,
    tmp_path: Path,
    media_type: MediaFamily,
    multiarch: bool,
) -> None:
    image = push_image(
        registry, "library/ubuntu", "22.04", layers=[3000, 70_000], media_type=media_type, multiarch=multiarch
    )
    assert image.reference == f"{registry.host}/library/ubuntu:22.04"
    assert len(image.manifests) == (2 if multiarch else 1)
    assert len(image.blobs) == len(image.manifests) * 3

    layout = skopeo.copy_to_oci(
        image.reference,
        tmp_path / "pulled",
        "22.04",
        credentials=registry.credentials,
        all_platforms=multiarch,
    )
    assert_pulled(layout, "22.04", image)


@pytest.mark.parametrize("flavour", ["htpasswd", "token"])
def test_authenticated_registries_refuse_wrong_credentials(
    registry_factory: RegistryFactory, push_image: PushImage, skopeo: Skopeo, tmp_path: Path, flavour: str
) -> None:
    registry = registry_factory.htpasswd() if flavour == "htpasswd" else registry_factory.token()
    image = push_image(registry, "team/app")
    assert registry.username is not None
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|invalid username/password"):
        skopeo.copy_to_oci(image.reference, tmp_path / "bad", credentials=(registry.username, "wrong"))
    if flavour == "htpasswd":
        with pytest.raises(SkopeoError, match=r"(?i)unauthorized"):
            skopeo.copy_to_oci(image.reference, tmp_path / "anonymous")
    else:
        assert registry.issuer is not None
        assert registry.issuer.requests[-1].status == 401


def test_token_issuer_anonymous_pull_allowed_then_refused(
    token_registry: RegistryServer, push_image: PushImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    issuer = token_registry.issuer
    assert issuer is not None and issuer.allow_anonymous
    image = push_image(token_registry, "library/alpine", "3.19", layers=[2048, 4096])
    assert [r.username for r in issuer.issued()] == ["tester"]  # one push token, cached
    issuer.reset_requests()

    assert_pulled(skopeo.copy_to_oci(image.reference, tmp_path / "anon", "3.19"), "3.19", image)
    anonymous = [r for r in issuer.issued() if r.username is None]
    assert anonymous and all(str(s) == "repository:library/alpine:pull" for r in anonymous for s in r.granted)

    issuer.allow_anonymous = False
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|authentication required"):
        skopeo.copy_to_oci(image.reference, tmp_path / "refused", "3.19")
    assert issuer.requests[-1].status == 401 and issuer.requests[-1].username is None
    # the configured user still pulls
    layout = skopeo.copy_to_oci(
        image.reference, tmp_path / "user", "3.19", credentials=token_registry.credentials
    )
    assert_pulled(layout, "3.19", image)


def _b64url_json(part: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def test_token_is_an_es256_jwt_the_registry_accepts(token_registry: RegistryServer) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    scope = "repository:some/repo:pull,push"
    response = httpx.get(
        issuer.realm, params={"service": issuer.service, "scope": scope}, auth=token_registry.credentials
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"]

    header_b64, claims_b64, _ = body["token"].split(".")
    header, claims = _b64url_json(header_b64), _b64url_json(claims_b64)
    assert header["alg"] == "ES256"
    assert base64.b64decode(header["x5c"][0]) == issuer.key.certificate.public_bytes(Encoding.DER)
    assert claims["iss"] == issuer.issuer and claims["aud"] == issuer.service
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] <= claims["iat"] and claims["jti"]
    assert claims["access"] == [{"type": "repository", "name": "some/repo", "actions": ["pull", "push"]}]

    bearer = {"Authorization": f"Bearer {body['token']}"}
    assert httpx.get(f"{token_registry.url}/v2/", headers=bearer).status_code == 200
    assert httpx.post(f"{token_registry.url}/v2/some/repo/blobs/uploads/", headers=bearer).status_code == 202
    assert httpx.get(issuer.realm, params={"service": "other", "scope": scope}).status_code == 400

    assert token_registry.username is not None and token_registry.password is not None
    form = {"grant_type": "password", "service": issuer.service, "scope": scope}
    oauth = httpx.post(issuer.realm, data={**form, "username": token_registry.username, "password": "x"})
    assert oauth.status_code == 401
    oauth = httpx.post(issuer.realm, data={**form, "username": "tester", "password": token_registry.password})
    assert oauth.status_code == 200 and oauth.json()["access_token"]
    assert [r.status for r in issuer.requests] == [200, 400, 401, 200]


def test_token_issuer_restarts_on_the_same_port(token_registry: RegistryServer) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    realm = issuer.realm
    issuer.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(realm, params={"service": issuer.service})
    issuer.start()
    assert issuer.realm == realm
    assert httpx.get(realm, params={"service": issuer.service}).status_code == 200


def test_access_log_counts_blob_gets(
    anonymous_registry: RegistryServer, push_image: PushImage, skopeo: Skopeo, tmp_path: Path
) -> None:
    image = push_image(anonymous_registry, "library/busybox", layers=[1000, 2000])
    assert anonymous_registry.count_blob_gets() == 0  # a push only HEADs blobs
    assert len(anonymous_registry.requests("HEAD", path_prefix="/v2/library/busybox/blobs/")) == 3

    skopeo.copy_to_oci(image.reference, tmp_path / "one")
    for layer in image.layers:
        (entry,) = anonymous_registry.blob_gets("library/busybox", layer.digest)
        assert (entry.status, entry.size) == (200, layer.size)
        assert entry.blob == ("library/busybox", layer.digest)
    skopeo.copy_to_oci(image.reference, tmp_path / "two")
    assert all(anonymous_registry.count_blob_gets(digest=layer.digest) == 2 for layer in image.layers)
    assert anonymous_registry.count_blob_gets("other/repo") == 0

    sample = AccessLogEntry.parse(
        '127.0.0.1 - - [27/Nov/2026:01:41:06 +0000] "GET /v2/a/b/blobs/sha256:'
        + "ab" * 32
        + ' HTTP/1.1" 200 1234 "" "skopeo/1.9.3"'
    )
    assert sample is not None and sample.blob == ("a/b", "sha256:" + "ab" * 32) and sample.size == 1234

    anonymous_registry.clear_log()
    assert anonymous_registry.access_log() == []


def test_stop_and_start_keep_port_storage_and_log(
    anonymous_registry: RegistryServer, push_image: PushImage
) -> None:
    image = push_image(anonymous_registry, "library/debian", "12", media_type="docker")
    url = anonymous_registry.url
    anonymous_registry.stop()
    assert not anonymous_registry.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/")

    anonymous_registry.start()
    assert anonymous_registry.url == url
    with RegistryClient.for_server(anonymous_registry) as client:
        response = client.get_manifest("library/debian", "12")
        assert response.content == image.manifest
        assert response.headers["content-type"] == image.media_type
        assert client.get_blob("library/debian", image.layers[0].digest) == image.layers[0].data
    assert sum("listening on" in line for line in anonymous_registry.log_lines()) == 2
    assert anonymous_registry.count_blob_gets(digest=image.layers[0].digest) == 1


def test_images_are_deterministic_and_well_formed() -> None:
    first, again = build_image([5000], seed="s"), build_image([5000], seed="s")
    assert first.digest == again.digest and first.layers[0].data == again.layers[0].data
    assert build_image([5000], seed="t").layers[0].digest != first.layers[0].digest

    docker = build_image([5000], seed="s", media_type="docker")
    assert docker.layers[0].data == first.layers[0].data  # same bytes, other media types
    assert json.loads(docker.manifest)["layers"][0]["mediaType"] == MEDIA_TYPES["docker"].layer

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first.layers[0].data))) as tar:
        (member,) = tar.getmembers()
        assert member.size == 5000
    config = json.loads(first.configs[0].data)
    assert config["rootfs"]["diff_ids"] == [first.layers[0].diff_id]

    index = build_image([10], seed="s", multiarch=True)
    assert [str(m.platform) for m in index.manifests] == ["linux/amd64", "linux/arm64/v8"]
    assert index.for_platform("linux/arm64").platform.variant == "v8"
    assert json.loads(index.manifest)["manifests"][1]["platform"] == {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
    }


def test_missing_registry_binary_fails_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("REGCACHE_DOCKER_REGISTRY", "/nonexistent/docker-registry")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y docker-registry skopeo"):
        request.getfixturevalue("anonymous_registry")
