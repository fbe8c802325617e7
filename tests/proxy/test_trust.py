"""The trust model's five reproductions, black-box (HTTP only, real docker-registry upstreams and a hostile
one): content is served only for the source that may see it (docs/security.md)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from regcache.proxy.core.oci import OCI_INDEX
from tests.helpers.hostile_upstream import HostileUpstream
from tests.registries.skopeo import assert_pulled

from .fronts import THROTTLE, FaultyFront


def _wait(what: str, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _code(response: httpx.Response) -> str:
    return response.json()["errors"][0]["code"]


@pytest.fixture
def hostile():
    upstream = HostileUpstream().start()
    yield upstream
    upstream.stop()


def test_joining_a_private_download_does_not_leak_it_to_another_source(regcache, registry_factory, push_image,
                                                                     monkeypatch):
    hidden = registry_factory.anonymous()  # reachable only through the front, which demands a login
    public = registry_factory.anonymous()  # team/app's upstream: it has no such layer
    image = push_image(hidden, "secret/app", "1", layers=[4_000_000])
    push_image(public, "team/app", "1", layers=[1_000])
    layer = image.layers[0]
    front = FaultyFront(hidden.url, THROTTLE, basic_auth=("puller", "s3cret-pw")).start()
    front.throttle_chunk = 64 * 1024  # about 1.5 s for the layer: the team client asks in the middle
    monkeypatch.setenv("TRUST_USER", "puller")
    monkeypatch.setenv("TRUST_PASSWORD", "s3cret-pw")
    control = regcache.control
    try:
        control.add_upstream(front.host, front.url, "both")
        control.add_upstream(public.host, public.url, "anonymous")
        control.create_credential_set("private-login", front.host, "env://TRUST_USER", "env://TRUST_PASSWORD")
        control.create_rule("secret-all", f"{front.host}/secret/*", "secret/*", "private-login")
        control.create_rule("team-all", f"{public.host}/team/*", "team/*")
        _, secret_password = control.create_token("secret-reader", ["secret/*"])
        _, team_password = control.create_token("team-only", ["team/*"])
        bodies: list[bytes] = []
        reader = threading.Thread(target=lambda: bodies.append(httpx.get(
            f"{regcache.url}/v2/secret/app/blobs/{layer.digest}", auth=("secret-reader", secret_password),
            timeout=60).content))
        reader.start()
        _wait("the private download to be under way",
              lambda: any(p.stat().st_size > 256 * 1024 for p in regcache.temp_files()))
        in_flight = reader.is_alive() and any(regcache.temp_files())
        leak = httpx.get(f"{regcache.url}/v2/team/app/blobs/{layer.digest}", auth=("team-only", team_password),
                         timeout=60)
        reader.join(60)
        later = httpx.get(f"{regcache.url}/v2/team/app/blobs/{layer.digest}", auth=("team-only", team_password),
                          timeout=60)
    finally:
        front.stop()
    assert in_flight  # the team client asked while the private download ran: a join was possible
    assert bodies == [layer.data]
    assert leak.status_code == 404 and _code(leak) == "BLOB_UNKNOWN", leak.text[:300]
    assert later.status_code == 404 and _code(later) == "BLOB_UNKNOWN"  # and it was not linked for good


def test_an_upstream_that_says_yes_to_every_head_unlocks_nothing(regcache, basic_auth_registry, push_image,
                                                                hostile, monkeypatch):
    image = push_image(basic_auth_registry, "secret/app", "1", layers=[3_000, 2_000])
    monkeypatch.setenv("TRUST_USER", basic_auth_registry.username)
    monkeypatch.setenv("TRUST_PASSWORD", basic_auth_registry.password)
    control = regcache.control
    control.add_upstream(basic_auth_registry.host, basic_auth_registry.url, "both")
    control.create_credential_set("private-login", basic_auth_registry.host, "env://TRUST_USER",
                                  "env://TRUST_PASSWORD")
    control.create_rule("secret-all", f"{basic_auth_registry.host}/secret/*", "secret/*", "private-login")
    control.add_upstream(hostile.host, hostile.url, "anonymous")
    control.create_rule("evil-all", f"{hostile.host}/evil/*", "evil/*")
    hostile.blob_size = 1_000  # its GETs send wrong bytes quickly
    with regcache.http() as http:
        assert http.get("/v2/secret/app/manifests/1", headers={"Accept": image.media_type}).status_code == 200
        for digest, blob in image.blobs.items():
            assert http.get(f"/v2/secret/app/blobs/{digest}").content == blob.data  # all cached now
        for digest, blob in image.blobs.items():
            head = http.head(f"/v2/evil/x/blobs/{digest}")
            # the upstream's own claim at most (its size), never what the cache holds for another source
            assert head.status_code != 200 or head.headers["content-length"] == str(hostile.blob_size)
            try:
                got = http.get(f"/v2/evil/x/blobs/{digest}")
            except httpx.TransportError:  # its wrong bytes failed the digest check mid-transfer
                continue
            assert got.status_code in (404, 502) and blob.data not in got.content, got.status_code
        for method in ("HEAD", "GET"):
            answer = http.request(method, f"/v2/evil/x/manifests/{image.digest}")
            assert answer.status_code == 404 and image.manifest not in answer.content, answer.status_code
    assert ("GET", f"/v2/evil/x/blobs/{image.layers[0].digest}") in hostile.requests  # it was asked
    assert ("GET", f"/v2/evil/x/manifests/{image.digest}") in hostile.requests


def test_an_upstream_cannot_change_the_media_type_another_source_is_served(regcache, anonymous_registry, push_image,
                                                                           hostile, skopeo, tmp_path):
    image = push_image(anonymous_registry, "team/app", "1", layers=[2_000])
    control = regcache.control
    server = regcache.add_upstream(anonymous_registry)
    control.create_rule("team-all", f"{server}/team/*", "team/*")
    control.add_upstream(hostile.host, hostile.url, "anonymous")
    control.create_rule("evil-all", f"{hostile.host}/evil/*", "evil/*")
    hostile.manifests[("evil/x", "1")] = (OCI_INDEX, image.manifest)  # the public bytes, labelled an index
    with regcache.http() as http:
        http.get("/v2/evil/x/manifests/1")  # the poisoning pull comes first
        served = http.get("/v2/team/app/manifests/1", headers={"Accept": image.media_type})
    assert served.status_code == 200 and served.content == image.manifest
    assert served.headers["content-type"] == image.media_type
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/team/app:1", tmp_path / "layout", "1"), "1", image)


def test_a_changed_rule_source_never_serves_the_old_sources_tags(regcache, anonymous_registry, push_image):
    app = push_image(anonymous_registry, "library/app", "1", layers=[2_000])
    push_image(anonymous_registry, "library/tool", "2", layers=[2_000])  # no tag 1
    control = regcache.control
    server = regcache.add_upstream(anonymous_registry)
    control.create_rule("app-rule", f"{server}/library/app", "app")
    with regcache.http() as http:
        assert http.get("/v2/app/manifests/1", headers={"Accept": app.media_type}).status_code == 200
        control.delete_rule("app-rule")
        control.create_rule("app-rule", f"{server}/library/tool", "app", freshness=3600)
        within_freshness = http.get("/v2/app/manifests/1", headers={"Accept": app.media_type})
        anonymous_registry.stop()
        upstream_down = http.get("/v2/app/manifests/1", headers={"Accept": app.media_type})
        by_digest = http.get(f"/v2/app/manifests/{app.digest}", headers={"Accept": app.media_type})
    assert within_freshness.status_code == 404 and _code(within_freshness) == "MANIFEST_UNKNOWN"
    assert upstream_down.status_code == 503 and upstream_down.content != app.manifest
    assert by_digest.status_code == 503 and by_digest.content != app.manifest


def test_a_range_of_a_blob_still_downloading_is_never_served_unverified(regcache, hostile):
    control = regcache.control
    control.add_upstream(hostile.host, hostile.url, "anonymous")
    control.create_rule("evil-all", f"{hostile.host}/evil/*", "evil/*")
    hostile.blob_size, hostile.chunk, hostile.delay = 1_000_000, 32 * 1024, 0.05  # about 1.5 s of wrong bytes
    digest = "sha256:" + "ab" * 32  # what the zeros it sends will not hash to
    def whole() -> None:  # fails too, once the wrong bytes are all there: the client gets a cut body
        try:
            httpx.get(f"{regcache.url}/v2/evil/x/blobs/{digest}", timeout=60)
        except httpx.TransportError:
            pass

    first = threading.Thread(target=whole)
    first.start()
    _wait("the download to be under way", lambda: any(regcache.temp_files()))
    ranged = httpx.get(f"{regcache.url}/v2/evil/x/blobs/{digest}", headers={"Range": "bytes=0-99"}, timeout=60)
    first.join(60)
    assert ranged.status_code not in (200, 206), ranged.status_code
    assert ranged.status_code == 502 and _code(ranged) == "UNKNOWN"
    assert not regcache.blob_files()  # nothing was stored either
