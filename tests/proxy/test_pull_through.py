"""Pull-through against real registries (Debian's docker-registry), pulled with real skopeo."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from regcache.proxy.core.models import JOINED_DOWNLOAD
from regcache.proxy.state.statistics import CacheStatistics
from tests.helpers.metrics import sample
from tests.helpers.state import cached_tag
from tests.registries.skopeo import SkopeoError, assert_pulled

from .fronts import CORRUPT, CUT, PASS, REDIRECT, THROTTLE, BlobCDN, FaultyFront

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def test_single_arch_by_tag_and_digest_both_media_types(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-images", f"{server}/team/*", "team/*")
    for family in ("oci", "docker"):
        image = push_image(anonymous_registry, f"team/app-{family}", "1.0", layers=[300_000, 5_000],
                           media_type=family)
        by_tag = skopeo.copy_to_oci(f"{regcache.host}/team/app-{family}:1.0", tmp_path / f"{family}-tag", "1.0")
        assert_pulled(by_tag, "1.0", image)
        by_digest = skopeo.copy_to_oci(f"{regcache.host}/team/app-{family}@{image.digest}",
                                       tmp_path / f"{family}-digest", "1.0")
        assert_pulled(by_digest, "1.0", image)

        with regcache.http() as http:
            for method in ("GET", "HEAD"):
                response = http.request(method, f"/v2/team/app-{family}/manifests/1.0",
                                        headers={"Accept": image.media_type})
                assert response.status_code == 200
                assert response.headers["docker-content-digest"] == image.digest
                assert response.headers["content-type"] == image.media_type
                assert response.headers["content-length"] == str(len(image.manifest))
                assert response.headers["docker-distribution-api-version"] == "registry/2.0"
                if method == "GET":
                    assert response.content == image.manifest
            layer = image.layers[0]
            head = http.head(f"/v2/team/app-{family}/blobs/{layer.digest}")
            assert head.status_code == 200 and head.headers["content-length"] == str(layer.size)
    events = regcache.events()
    assert {e["result"] for e in events} >= {"hit", "miss"}
    assert all(e["rule"] == "team-images" for e in events)


def test_a_cold_layer_is_hashed_and_written_on_its_connections_thread_not_the_loops(
        regcache, anonymous_registry, push_image, skopeo, tmp_path, taken_bodies):
    """docker-registry answers a blob GET with a Content-Length: the body goes from the connection's thread to
    the file (regcache.proxy.upstream.read_ahead), the event loop parses and hashes none of it."""
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-images", f"{server}/team/*", "team/*")
    image = push_image(anonymous_registry, "team/app", "1.0", layers=[9_000_000, 3_000])
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/team/app:1.0", tmp_path / "pulled", "1.0"), "1.0", image)
    for layer in image.layers:
        assert taken_bodies.taken[layer.digest], layer.digest
        # the connection's thread, and a worker for what arrived with the head; never the loop's (regcache-proxy)
        assert taken_bodies.threads[layer.digest] <= {"regcache upstream receive", "AnyIO worker thread"}
    assert "regcache upstream receive" in taken_bodies.threads[image.layers[0].digest]
    regcache.settle()
    stored = {f"sha256:{path.name}": path.stat().st_size for path in regcache.blob_files()}
    assert all(stored[layer.digest] == layer.size for layer in image.layers)
    # and served warm from what was written
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/team/app:1.0", tmp_path / "again", "1.0"), "1.0", image)


def test_multi_arch_index(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("multi-arch", f"{server}/library/multi", "multi")
    image = push_image(anonymous_registry, "library/multi", "2", layers=[50_000], multiarch=True)
    layout = skopeo.copy_to_oci(f"{regcache.host}/multi:2", tmp_path / "all", "2", all_platforms=True)
    assert_pulled(layout, "2", image)
    # by digest, a second time: every blob and manifest is a hit, the upstream is not asked
    before = anonymous_registry.count_blob_gets()
    layout = skopeo.copy_to_oci(f"{regcache.host}/multi@{image.digest}", tmp_path / "again", "2",
                                all_platforms=True)
    assert_pulled(layout, "2", image)
    assert anonymous_registry.count_blob_gets() == before
    # a client that cannot read an index gets the linux/amd64 image, as from the distribution registry
    with regcache.http() as http:
        response = http.get("/v2/multi/manifests/2",
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert response.status_code == 200
        assert response.headers["docker-content-digest"] == image.for_platform("linux/amd64").digest


def test_range_requests_on_cold_and_warm_blobs(regcache, anonymous_registry, push_image):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("ranges", f"{server}/library/ranged", "ranged")
    image = push_image(anonymous_registry, "library/ranged", "1", layers=[200_000])
    layer = image.layers[0]
    url = f"/v2/ranged/blobs/{layer.digest}"
    with regcache.http() as http:
        cold = http.get(url, headers={"Range": "bytes=100-1099"})  # not cached yet
        assert cold.status_code == 206
        assert cold.content == layer.data[100:1100]
        assert cold.headers["content-range"] == f"bytes 100-1099/{layer.size}"
        full = http.get(url)
        assert full.status_code == 200 and full.content == layer.data
        tail = http.get(url, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == layer.data[-10:]
        rest = http.get(url, headers={"Range": f"bytes={layer.size - 5}-"})
        assert rest.content == layer.data[-5:]
        bad = http.get(url, headers={"Range": f"bytes={layer.size}-"})
        assert bad.status_code == 416
        assert bad.json()["errors"][0]["code"] == "RANGE_INVALID"
        garbled = http.get(url, headers={"Range": "pages=1-2"})
        assert garbled.status_code == 416


def test_tags_list_with_pagination(regcache, anonymous_registry, push_image):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("tagged-app", f"{server}/library/tagged", "tagged")
    for tag in ("a", "b", "c", "d", "e"):
        push_image(anonymous_registry, "library/tagged", tag, layers=[100])
    with regcache.http() as http:
        first = http.get("/v2/tagged/tags/list", params={"n": 2})
        assert first.json() == {"name": "tagged", "tags": ["a", "b"]}
        link = first.headers["link"]
        assert link == '</v2/tagged/tags/list?n=2&last=b>; rel="next"'
        second = http.get(link[1:link.index(">")])
        assert second.json()["tags"] == ["c", "d"]
        last = http.get("/v2/tagged/tags/list", params={"n": 2, "last": "d"})
        assert last.json()["tags"] == ["e"] and "link" not in last.headers
        assert http.get("/v2/tagged/tags/list").json()["tags"] == ["a", "b", "c", "d", "e"]


def test_name_unknown_without_a_rule(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    regcache.add_upstream(anonymous_registry)
    push_image(anonymous_registry, "library/norule", "1")
    with pytest.raises(SkopeoError):
        skopeo.copy_to_oci(f"{regcache.host}/norule:1", tmp_path / "x", "1")
    with regcache.http() as http:
        response = http.get("/v2/norule/manifests/1")
    assert response.status_code == 404
    error = response.json()["errors"][0]
    assert error["code"] == "NAME_UNKNOWN"
    assert "no cache rule covers repository 'norule'" in error["message"]
    assert "regcache cache create" in error["message"]
    # and the upstream was never asked
    assert anonymous_registry.requests("GET", path_prefix="/v2/library/norule") == []


def test_push_is_unsupported(regcache):
    with regcache.http() as http:
        response = http.post("/v2/team/app/blobs/uploads/")
        assert response.status_code == 405
        assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
        response = http.put("/v2/team/app/manifests/1", content=b"{}")
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


def _secret(regcache, name: str, value: str) -> str:
    secret_id = f"keyring://regcache-tests/{name}"
    regcache.control.set_secret(secret_id, value)
    return secret_id


def test_basic_auth_upstream_and_wrong_secrets(regcache, basic_auth_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(basic_auth_registry, auth="credentials")
    user, password = basic_auth_registry.credentials
    regcache.control.create_credential_set("basic-creds", server, _secret(regcache, "u", user),
                                           _secret(regcache, "p", password))
    regcache.control.create_credential_set("wrong-creds", server, _secret(regcache, "u2", user),
                                           _secret(regcache, "p2", "not-the-password"))
    regcache.control.create_rule("private-app", f"{server}/acme/private", "private", "basic-creds")
    regcache.control.create_rule("private-bad", f"{server}/acme/private", "private-bad", "wrong-creds")
    image = push_image(basic_auth_registry, "acme/private", "1", layers=[40_000])
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/private:1", tmp_path / "ok", "1"), "1", image)
    assert regcache.control.get_credential_set("basic-creds").health.status.value == "Healthy"

    with pytest.raises(SkopeoError) as info:
        skopeo.copy_to_oci(f"{regcache.host}/private-bad:1", tmp_path / "bad", "1")
    assert "unauthorized" in info.value.stderr.lower() or "401" in info.value.stderr
    health = regcache.control.get_credential_set("wrong-creds").health
    assert (health.status.value, health.error_code) == ("Unhealthy", "UpstreamAuthFailed")
    assert "not-the-password" not in (health.message or "")


def test_bearer_upstream_anonymous_and_with_credentials(regcache, token_registry, push_image, skopeo, tmp_path):
    # the token service listens on another loopback port: the operator allows its origin for this upstream
    server = token_registry.host
    regcache.control.add_upstream(server, token_registry.url, "both", [token_registry.issuer.url])
    image = push_image(token_registry, "acme/tokened", "1", layers=[30_000])
    regcache.control.create_rule("anon-token", f"{server}/acme/tokened", "anon")
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/anon:1", tmp_path / "anon", "1"), "1", image)

    token_registry.issuer.allow_anonymous = False
    regcache.control.create_credential_set("token-creds", server, _secret(regcache, "tu", token_registry.username),
                                           _secret(regcache, "tp", token_registry.password))
    regcache.control.create_credential_set("token-wrong", server, _secret(regcache, "tu2", token_registry.username),
                                           _secret(regcache, "tp2", "wrong-password"))
    regcache.control.create_rule("auth-token", f"{server}/acme/tokened", "authed", "token-creds")
    regcache.control.create_rule("wrong-token", f"{server}/acme/tokened", "wrong", "token-wrong")
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/authed:1", tmp_path / "authed", "1"), "1", image)
    with pytest.raises(SkopeoError):
        skopeo.copy_to_oci(f"{regcache.host}/wrong:1", tmp_path / "wrong", "1")
    health = regcache.control.get_credential_set("token-wrong").health
    assert (health.status.value, health.error_code) == ("Unhealthy", "UpstreamAuthFailed")
    # tokens are cached: pulling again asks the issuer for nothing new
    requests_before = token_registry.issuer.request_count
    skopeo.copy_to_oci(f"{regcache.host}/authed:1", tmp_path / "authed2", "1")
    assert token_registry.issuer.request_count == requests_before


def test_docker_hub_override_and_library_prefix(regcache, basic_auth_registry, push_image, skopeo, tmp_path):
    regcache.control.add_upstream("docker.io", basic_auth_registry.url)
    user, password = basic_auth_registry.credentials
    regcache.control.create_credential_set("hub-creds", "docker.io", _secret(regcache, "hu", user),
                                           _secret(regcache, "hp", password))
    regcache.control.create_rule("ubuntu", "docker.io/ubuntu", "ubuntu", "hub-creds")
    image = push_image(basic_auth_registry, "library/ubuntu", "22.04", layers=[20_000])
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/ubuntu:22.04", tmp_path / "u", "22.04"), "22.04", image)
    assert basic_auth_registry.count_blob_gets("library/ubuntu") == 2  # layer and config, via library/


def test_blob_redirect_is_followed_without_authorization(regcache, anonymous_registry, push_image, skopeo,
                                                         tmp_path):
    image = push_image(anonymous_registry, "acme/cdn", "1", layers=[60_000])
    cdn = BlobCDN(anonymous_registry.url, "acme/cdn").start()
    front = FaultyFront(anonymous_registry.url, REDIRECT, basic_auth=("fronted", "front-pass"), cdn=cdn).start()
    try:
        regcache.control.add_upstream(front.host, front.url, "credentials", [cdn.url])  # a loopback CDN: allowed
        regcache.control.create_credential_set("front-creds", front.host, _secret(regcache, "fu", "fronted"),
                                               _secret(regcache, "fp", "front-pass"))
        regcache.control.create_rule("cdn-app", f"{front.host}/acme/cdn", "cdn", "front-creds")
        assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/cdn:1", tmp_path / "cdn", "1"), "1", image)
        assert len(cdn.requests) == 2  # the layer and the config came from the CDN
        assert all("authorization" not in headers for headers in cdn.requests)
    finally:
        front.stop()
        cdn.stop()


def test_concurrent_cold_pulls_share_one_download(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("popular", f"{server}/library/popular", "popular")
    image = push_image(anonymous_registry, "library/popular", "1", layers=[3_000_000, 2_000_000, 1_000])

    def pull(i: int):
        return skopeo.copy_to_oci(f"{regcache.host}/popular:1", tmp_path / f"p{i}", "1")

    with ThreadPoolExecutor(8) as pool:
        layouts = list(pool.map(pull, range(8)))
    for layout in layouts:
        assert_pulled(layout, "1", image)
    for digest in image.blobs:
        assert anonymous_registry.count_blob_gets("library/popular", digest) == 1, digest
    # the tag's manifest too: one GET however many ask at once (later pulls revalidate with a HEAD)
    tag_gets = anonymous_registry.requests("GET", path_prefix="/v2/library/popular/manifests/1", status=200)
    assert len(tag_gets) == 1, tag_gets
    # statistics count each blob's bytes as fetched once, however the pulls overlapped
    assert CacheStatistics(regcache.control.store).totals().bytes_fetched == sum(
        blob.size for blob in image.blobs.values())


def test_requests_that_join_a_download_are_misses_whose_bytes_count_as_fetched_once(
        regcache, anonymous_registry, push_image):
    image = push_image(anonymous_registry, "library/joined", "1", layers=[4_000_000])
    layer = image.layers[0]
    front = FaultyFront(anonymous_registry.url, THROTTLE).start()  # ~1 s for the layer: the requests overlap
    try:
        server = regcache.add_upstream(front)
        regcache.control.create_rule("joined-lib", f"{server}/library/joined", "joined")

        def get(_: int) -> bytes:
            with regcache.http() as http:
                return http.get(f"/v2/joined/blobs/{layer.digest}").content

        with ThreadPoolExecutor(3) as pool:
            bodies = list(pool.map(get, range(3)))
    finally:
        front.stop()
    assert bodies == [layer.data] * 3
    assert front.blob_gets == 1
    events = [e for e in regcache.events() if e["kind"] == "blob"]
    assert sorted((e["result"], e["detail"] or "") for e in events) == [
        ("miss", ""), ("miss", JOINED_DOWNLOAD), ("miss", JOINED_DOWNLOAD)]
    assert CacheStatistics(regcache.control.store).totals().bytes_fetched == layer.size
    metrics = httpx.get(f"{regcache.url}/metrics").text
    assert sample(metrics, "regcache_bytes_fetched_total", rule="joined-lib") == layer.size


def test_upstream_down_serves_cached_stale(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("offline-lib", f"{server}/library/*", "lib/*")
    image = push_image(anonymous_registry, "library/offline", "1", layers=[10_000])
    push_image(anonymous_registry, "library/never-pulled", "1", layers=[10_000])
    skopeo.copy_to_oci(f"{regcache.host}/lib/offline:1", tmp_path / "warm", "1")

    anonymous_registry.stop()
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/lib/offline:1", tmp_path / "tag", "1"), "1", image)
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/lib/offline@{image.digest}", tmp_path / "digest", "1"),
                  "1", image)
    with regcache.http() as http:
        response = http.get("/v2/lib/offline/manifests/1")
        assert response.status_code == 200 and response.headers["x-regcache-stale"] == "1"
        assert response.content == image.manifest
        tags = http.get("/v2/lib/offline/tags/list")
        assert tags.json()["tags"] == ["1"] and tags.headers["x-regcache-stale"] == "1"
        missing = http.get("/v2/lib/never-pulled/manifests/1")
        assert missing.status_code == 503
        error = missing.json()["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert f"upstream {server}" in error["message"] and "unreachable" in error["message"]
    with pytest.raises(SkopeoError):
        skopeo.copy_to_oci(f"{regcache.host}/lib/never-pulled:1", tmp_path / "never", "1")
    stale = [e for e in regcache.events() if e["result"] == "stale"]
    assert stale and all("unreachable" in e["detail"] for e in stale)


@pytest.mark.parametrize("mode", [CUT, CORRUPT])
def test_broken_upstream_blob_stores_nothing(regcache, anonymous_registry, push_image, skopeo, tmp_path, mode):
    image = push_image(anonymous_registry, "acme/fragile", "1", layers=[400_000])
    front = FaultyFront(anonymous_registry.url, mode).start()
    try:
        regcache.control.add_upstream(front.host, front.url, "anonymous")
        regcache.control.create_rule("fragile-app", f"{front.host}/acme/fragile", "fragile")
        with pytest.raises(SkopeoError):
            skopeo.copy_to_oci(f"{regcache.host}/fragile:1", tmp_path / "broken", "1")
        layer = image.layers[0]
        assert not regcache.server.app.state.registry.cache.blobs.backend.stored(layer.digest)
        assert regcache.temp_files() == []
        errors = [e for e in regcache.events() if e["result"] == "error" and e["kind"] == "blob"]
        assert errors, "the failed transfer is in the event log"

        front.mode = PASS  # the upstream recovers
        assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/fragile:1", tmp_path / "ok", "1"), "1", image)
        regcache.settle()
        assert regcache.server.app.state.registry.cache.blobs.backend.stored(layer.digest)
    finally:
        front.stop()


def test_catalog_lists_cached_repositories(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("catalogued", f"{server}/library/*", "lib/*")
    for name in ("one", "two"):
        push_image(anonymous_registry, f"library/{name}", "1")
        skopeo.copy_to_oci(f"{regcache.host}/lib/{name}:1", tmp_path / name, "1")
    with regcache.http() as http:
        assert http.get("/v2/_catalog").json() == {"repositories": ["lib/one", "lib/two"]}
        page = http.get("/v2/_catalog", params={"n": 1})
        assert page.json() == {"repositories": ["lib/one"]}
        assert page.headers["link"] == '</v2/_catalog?n=1&last=lib/one>; rel="next"'
        referrers = http.get(f"/v2/lib/one/referrers/sha256:{'a' * 64}")
        assert referrers.status_code == 200 and json.loads(referrers.content)["manifests"] == []


def test_tag_revalidation_by_head(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("moving-tag", f"{server}/library/moving", "moving")
    first = push_image(anonymous_registry, "library/moving", "latest", layers=[1_000], seed="v1")
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/moving:latest", tmp_path / "v1", "latest"), "latest", first)

    anonymous_registry.clear_log()
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/moving:latest", tmp_path / "v1b", "latest"), "latest", first)
    manifest_requests = [(e.method, e.path) for e in anonymous_registry.requests(path_prefix="/v2/library/moving/")]
    # unchanged: one HEAD to revalidate (freshness window 0), no GET, no blob traffic
    assert manifest_requests == [("HEAD", "/v2/library/moving/manifests/latest")]

    second = push_image(anonymous_registry, "library/moving", "latest", layers=[1_000], seed="v2")
    assert second.digest != first.digest
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/moving:latest", tmp_path / "v2", "latest"), "latest", second)
    # the old image stays pullable by digest
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/moving@{first.digest}", tmp_path / "old", "latest"),
                  "latest", first)


def test_fresh_tags_are_not_revalidated(home, keyring_env, anonymous_registry, push_image, skopeo, tmp_path):
    from .conftest import start_regcache

    rc = start_regcache(home, freshness=3600)
    try:
        server = rc.add_upstream(anonymous_registry)
        rc.control.create_rule("fresh-tag", f"{server}/library/fresh", "fresh")
        image = push_image(anonymous_registry, "library/fresh", "1", layers=[1_000])
        skopeo.copy_to_oci(f"{rc.host}/fresh:1", tmp_path / "a", "1")
        anonymous_registry.clear_log()
        assert_pulled(skopeo.copy_to_oci(f"{rc.host}/fresh:1", tmp_path / "b", "1"), "1", image)
        assert anonymous_registry.requests(path_prefix="/v2/library/fresh/") == []
    finally:
        rc.proxy.stop()
        rc.control.close()


def test_download_completes_when_the_first_client_goes_away(regcache, anonymous_registry, push_image):
    import time

    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("abandoned", f"{server}/library/abandoned", "abandoned")
    image = push_image(anonymous_registry, "library/abandoned", "1", layers=[20_000_000])
    layer = image.layers[0]
    blobs = regcache.server.app.state.registry.cache.blobs
    with regcache.http() as http:
        with http.stream("GET", f"/v2/abandoned/blobs/{layer.digest}") as response:
            assert response.status_code == 200
            next(response.iter_raw(65536))  # read a little, then hang up
    deadline = time.monotonic() + 30
    while blobs.backend.stored(layer.digest) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert blobs.backend.stored(layer.digest) is not None
    assert blobs.backend.path_for(layer.digest).read_bytes() == layer.data
    with regcache.http() as http:
        assert http.get(f"/v2/abandoned/blobs/{layer.digest}").content == layer.data
    assert anonymous_registry.count_blob_gets("library/abandoned", layer.digest) == 1
    results = [e["result"] for e in regcache.events() if e["kind"] == "blob"]
    assert results == ["miss", "hit"]


def test_mirror_mode_routes_by_source(regcache, anonymous_registry, push_image):
    """containerd as a mirror client sends ?ns=REGISTRY: the rule whose source covers it serves."""
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("mirror-all", f"{server}/*", "mirrored/*")
    image = push_image(anonymous_registry, "library/alpine", "3", layers=[2_000])
    with regcache.http() as http:
        response = http.get("/v2/library/alpine/manifests/3", params={"ns": server},
                            headers={"Accept": image.media_type})
        assert response.status_code == 200 and response.content == image.manifest
        layer = image.layers[0]
        blob = http.get(f"/v2/library/alpine/blobs/{layer.digest}", params={"ns": server})
        assert blob.content == layer.data
        unknown = http.get("/v2/library/alpine/manifests/3", params={"ns": "quay.io"})
        assert unknown.status_code == 404
        assert "no cache rule has a source covering quay.io/library/alpine" in unknown.json()["errors"][0]["message"]
    # cached under the rule's target name
    assert cached_tag(regcache.control.store, "mirrored/library/alpine", "3") is not None


def test_per_rule_freshness_and_stale_policies(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("fresh-rule", f"{server}/library/policy", "fresh", freshness=3600)
    regcache.control.create_rule("strict-rule", f"{server}/library/policy", "strict", serve_stale_on_error=False)
    regcache.control.create_rule("keep-deleted", f"{server}/library/policy", "kept", serve_stale_if_deleted=True)
    image = push_image(anonymous_registry, "library/policy", "1", layers=[1_000])
    with regcache.http() as http:
        for name in ("fresh", "strict", "kept"):
            assert http.get(f"/v2/{name}/manifests/1").status_code == 200
        anonymous_registry.clear_log()
        assert http.get("/v2/fresh/manifests/1").status_code == 200
        assert anonymous_registry.requests(path_prefix="/v2/library/policy/") == []  # within its window

        # the upstream deletes the tag's manifest: only the rule that keeps deleted tags serves it
        from tests.registries.client import RegistryClient

        RegistryClient(anonymous_registry.url).delete_manifest("library/policy", image.digest)
        assert http.get("/v2/strict/manifests/1").status_code == 404
        kept = http.get("/v2/kept/manifests/1")
        assert kept.status_code == 200 and kept.headers["x-regcache-stale"] == "1"

        # the upstream goes away: the strict rule refuses to serve stale, the others do
        anonymous_registry.stop()
        strict = http.get("/v2/strict/manifests/1")
        assert strict.status_code == 503 and strict.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert http.get("/v2/kept/manifests/1").headers["x-regcache-stale"] == "1"
