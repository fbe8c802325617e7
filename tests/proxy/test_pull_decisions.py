"""The pull decisions in milliseconds, over an in-process upstream (httpx.MockTransport): freshness,
revalidation, stale serving, content negotiation, link confirmation and the domain errors a client gets.
The same behaviour against a real docker-registry with skopeo is in test_pull_through.py."""

from __future__ import annotations

import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.errors import (
    BlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    UpstreamAuthFailed,
    UpstreamBadContent,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from regcache.proxy.core.models import Result
from regcache.proxy.core.oci import DOCKER_MANIFEST, OCI_MANIFEST
from regcache.proxy.storage.download import BlobDownloadError
from tests.helpers.fake_registry import LOGIN_SERVER, FakeRegistry, digest_of, fake_engine

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


def configure(home, rule: str = "rule-000", **settings) -> None:
    control = ControlPlane.open(home)
    try:
        control.update_rule(rule, **settings)
    finally:
        control.close()


async def test_a_tag_within_its_freshness_window_is_served_without_asking_the_upstream(home, registry):
    digest = registry.put_image("library/app", "1")
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        configure(home, freshness=600)
        match = await cache.resolve("app")
        first = await cache.manifest(match, "1", [])
        asked = len(registry.requests)
        second = await cache.manifest(match, "1", [])
    assert (first.result, second.result) == (Result.MISS, Result.HIT)
    assert first.digest == second.digest == digest
    assert len(registry.requests) == asked  # not even a HEAD


async def test_an_unchanged_tag_is_revalidated_with_one_head_and_no_get(home, registry):
    registry.put_image("library/app", "1")
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        match = await cache.resolve("app")
        await cache.manifest(match, "1", [])
        gets, heads = registry.count("GET", "manifests"), registry.count("HEAD", "manifests")
        served = await cache.manifest(match, "1", [])
    assert served.result is Result.HIT
    assert (registry.count("GET", "manifests"), registry.count("HEAD", "manifests")) == (gets, heads + 1)


async def test_a_moved_tag_is_fetched_again(home, registry):
    registry.put_image("library/app", "1", layer=b"first")
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        match = await cache.resolve("app")
        await cache.manifest(match, "1", [])
        moved = registry.put_image("library/app", "1", layer=b"second")
        served = await cache.manifest(match, "1", [])
    assert (served.result, served.digest) == (Result.MISS, moved)


async def test_an_upstream_outage_serves_the_cached_tag_stale(home, registry):
    digest = registry.put_image("library/app", "1")
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        match = await cache.resolve("app")
        await cache.manifest(match, "1", [])
        registry.status = 503
        served = await cache.manifest(match, "1", [])
    assert (served.result, served.digest) == (Result.STALE, digest)
    assert "503" in (served.detail or "")


async def test_without_stale_serving_an_outage_is_upstream_unavailable(home, registry):
    registry.put_image("library/app", "1")
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        configure(home, serve_stale_on_error=False)
        match = await cache.resolve("app")
        await cache.manifest(match, "1", [])
        registry.status = 502
        with pytest.raises(UpstreamUnavailable) as info:
            await cache.manifest(match, "1", [])
    assert not isinstance(info.value, UpstreamRateLimited)


async def test_a_rate_limit_with_nothing_cached_is_upstream_rate_limited(home, registry):
    registry.status = 429
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        match = await cache.resolve("app")
        with pytest.raises(UpstreamRateLimited, match="nothing is cached"):
            await cache.manifest(match, "1", [])


async def test_a_deleted_tag_is_unknown_unless_the_rule_serves_deleted_tags_stale(home, registry):
    digest = registry.put_image("library/app", "1")
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        match = await cache.resolve("app")
        await cache.manifest(match, "1", [])
        del registry.manifests[("library/app", "1")]
        with pytest.raises(ManifestUnknown, match="has no tag '1'"):
            await cache.manifest(match, "1", [])
        configure(home, serve_stale_if_deleted=True)
        match = await cache.resolve("app")
        served = await cache.manifest(match, "1", [])
    assert (served.result, served.digest) == (Result.STALE, digest)


async def test_a_client_that_cannot_read_an_index_gets_its_linux_amd64_image(home, registry):
    amd64 = registry.put_image("library/app", None, layer=b"amd64")
    arm64 = registry.put_image("library/app", None, layer=b"arm64")
    registry.put_index("library/app", "1", {"linux/arm64": arm64, "linux/amd64": amd64})
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        match = await cache.resolve("app")
        served = await cache.manifest(match, "1", [OCI_MANIFEST])
        with pytest.raises(ManifestUnknown, match="does not accept"):
            await cache.manifest(match, "1", [DOCKER_MANIFEST])
    assert (served.digest, served.media_type) == (amd64, OCI_MANIFEST)


async def test_a_cached_digest_is_linked_to_another_repository_only_once_its_upstream_confirms(home, registry):
    blob = registry.put_blob("library/a", b"shared base layer")
    async with fake_engine(home, registry, {"a": "library/a", "b": "library/b"}) as cache:
        first = await cache.blob(await cache.resolve("a"), blob)
        assert b"".join([c async for c in first.chunks()]) == b"shared base layer"
        await first.wait_kept()  # cached: stored, not only verified
        b = await cache.resolve("b")
        with pytest.raises(BlobUnknown, match="is not in b"):  # library/b's upstream answers 404
            await cache.blob(b, blob)
        registry.put_blob("library/b", b"shared base layer")
        confirmed = await cache.blob(b, blob)
        heads = registry.count("HEAD", "blobs")
        again = await cache.blob(b, blob)
    assert (first.result, confirmed.result, again.result) == (Result.MISS, Result.HIT, Result.HIT)
    assert registry.count("HEAD", "blobs") == heads  # linked now: no second confirmation
    assert registry.count("GET", "blobs") == 1  # the bytes were downloaded once


async def test_a_manifest_that_does_not_match_its_digest_is_manifest_invalid(home, registry):
    digest = registry.put_image("library/app", None)
    registry.manifests[("library/app", digest)] = (OCI_MANIFEST, b'{"schemaVersion":2,"layers":[]}')
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        with pytest.raises(ManifestInvalid, match="does not match"):
            await cache.manifest(await cache.resolve("app"), digest, [])
        stored = await cache.state.run(lambda s: s.manifest(digest))
    assert stored is None


async def test_a_pull_by_digest_never_asks_the_upstream_once_cached(home, registry):
    digest = registry.put_image("library/app", None)
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        match = await cache.resolve("app")
        await cache.manifest(match, digest, [])
        asked = len(registry.requests)
        registry.status = 503
        served = await cache.manifest(match, digest, [])
    assert served.result is Result.HIT and len(registry.requests) == asked


async def test_a_blob_whose_bytes_fail_their_digest_is_never_kept(home, registry):
    wrong = digest_of(b"what the digest promises")
    registry.blobs[("library/app", wrong)] = b"something else entirely"
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        # a small blob fails before its answer starts; a big one would fail its reader before the last byte
        with pytest.raises((UpstreamBadContent, BlobDownloadError), match="does not match"):
            blob = await cache.blob(await cache.resolve("app"), wrong)
            async for _ in blob.chunks():
                pass
        assert await cache.blobs.lookup(wrong) is None
    assert not (home / "blobs" / "tmp").exists() or list((home / "blobs" / "tmp").iterdir()) == []


async def test_a_name_no_rule_covers_is_name_unknown_and_asks_no_upstream(home, registry):
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        with pytest.raises(NameUnknown, match="no cache rule covers repository 'other'"):
            await cache.resolve("other")
    assert registry.requests == []


async def test_a_blob_download_keeps_the_credential_set_health_like_every_upstream_call(home, registry, monkeypatch):
    """Blob misses go through the same upstream-call path as manifests: a refused login marks the set
    Unhealthy, and a successful authenticated download marks it Healthy again."""
    monkeypatch.setenv("FAKE_USER", "puller")
    monkeypatch.setenv("FAKE_PASSWORD", "wrong")
    registry.login = ("puller", "right")
    blob = registry.put_blob("library/app", b"private layer")
    async with fake_engine(home, registry, {"app": "library/app"}) as cache:
        control = ControlPlane.open(home)
        try:
            control.create_credential_set("fake-login", LOGIN_SERVER, "env://FAKE_USER", "env://FAKE_PASSWORD")
            control.update_rule("rule-000", credential_set="fake-login")
        finally:
            control.close()
        match = await cache.resolve("app")
        with pytest.raises(UpstreamAuthFailed):
            await cache.blob(match, blob)
        refused = await cache.state.run(lambda s: s.credential_set("fake-login"))
        monkeypatch.setenv("FAKE_PASSWORD", "right")
        served = await cache.blob(match, blob)
        assert b"".join([c async for c in served.chunks()]) == b"private layer"
        healed = await cache.state.run(lambda s: s.credential_set("fake-login"))
    assert (refused.health.status.value, refused.health.error_code) == ("Unhealthy", "UpstreamAuthFailed")
    assert healed.health.status.value == "Healthy"
