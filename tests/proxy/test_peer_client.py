"""A fleet member's answer is bounded like an upstream's: a heartbeat's address is only as trustworthy as the bucket
(in-process transport: the bounds, not the network, are under test here; tests/scale_out/test_fleet.py runs nodes)."""

from __future__ import annotations

import hashlib
import time

import anyio
import httpx
import pytest

from regcache.proxy.core.fleet import ANSWER_HEADER, SIGNATURE_HEADER, VALIDATED_HEADER, Member, answer_signature
from regcache.proxy.core.oci import OCI_MANIFEST
from regcache.proxy.core.settings import UpstreamLimits
from regcache.proxy.upstream.client import UpstreamProtocolError
from regcache.proxy.upstream.peer import PeerAnswerRefused, PeerClient, PeerUnavailable, peer_manifest_target

OWNER = Member("node-b", "http://10.0.0.2:5000", "fp", "0.1.0", 1)
DIGEST = "sha256:" + "0" * 64
LIMITS = UpstreamLimits(blob_bytes=1024 * 1024, manifest_bytes=4 * 1024 * 1024)


def client(answer: httpx.Response) -> PeerClient:
    return PeerClient("node-a", "secret", transport=httpx.MockTransport(lambda request: answer))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_announced_size_over_the_blob_limit_is_not_taken(anyio_backend):
    peers = client(httpx.Response(200, headers={"content-length": str(9 * 1024**3)},
                                  stream=httpx.ByteStream(b"")))
    with pytest.raises(PeerUnavailable, match="larger than the blob limit"):
        async with peers.blob(OWNER, "team/app", DIGEST, "anonymous/x/team/app", LIMITS):
            pass
    await peers.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_body_without_a_size_is_cut_at_the_blob_limit(anyio_backend):
    peers = client(httpx.Response(200, stream=httpx.ByteStream(bytes(3 * 1024 * 1024))))
    received = 0
    with pytest.raises(UpstreamProtocolError, match="blob-max-size"):
        async with peers.blob(OWNER, "team/app", DIGEST, "anonymous/x/team/app", LIMITS) as blob:
            assert blob.size is None
            async for chunk in blob.chunks():
                received += len(chunk)
    assert received <= LIMITS.blob_bytes
    await peers.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_node_serving_https_never_sends_its_signed_request_in_the_clear(anyio_backend):
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, stream=httpx.ByteStream(b""))

    peers = PeerClient("node-a", "secret", transport=httpx.MockTransport(answer), https_only=True)
    with pytest.raises(PeerUnavailable, match="plain http, while this node serves https"):
        async with peers.blob(OWNER, "team/app", DIGEST, "anonymous/x/team/app", LIMITS):
            pass
    assert sent == []  # nothing went on the wire
    secure = Member("node-b", "https://10.0.0.2:5000", "fp", "0.1.0", 1)
    async with peers.blob(secure, "team/app", DIGEST, "anonymous/x/team/app", LIMITS):
        pass
    assert [str(r.url).split("/_regcache")[0] for r in sent] == ["https://10.0.0.2:5000"]
    with pytest.raises(PeerUnavailable, match="plain http, while this node serves https"):  # a tag's too
        await peers.manifest(OWNER, "team/app", "1.0", "anonymous/x/team/app", 0, LIMITS)
    assert len(sent) == 1
    await peers.aclose()


MANIFEST = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":'
            b'"application/vnd.oci.image.config.v1+json","digest":"sha256:' + b"a" * 64 + b'","size":2},"layers":[]}')
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
SOURCE = "anonymous/x/team/app"


def signed_answer(request: httpx.Request, content: bytes = MANIFEST, secret: str = "secret",
                  **extra: str) -> httpx.Response:
    """What an owner sends: the manifest, its digest and media type, signed for ``request``."""
    headers = {"docker-content-digest": MANIFEST_DIGEST, "content-type": OCI_MANIFEST, VALIDATED_HEADER: "1.0"}
    headers.update(extra)
    headers[ANSWER_HEADER] = answer_signature(secret, request.headers[SIGNATURE_HEADER],
                                              headers["docker-content-digest"], headers["content-type"],
                                              headers[VALIDATED_HEADER], "")
    return httpx.Response(200, headers=headers, content=content)


def owner(handler) -> PeerClient:
    return PeerClient("node-a", "secret", transport=httpx.MockTransport(handler))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_signed_manifest_answer_is_taken_and_the_request_names_source_and_freshness(anyio_backend):
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return signed_answer(request)

    peers = owner(handler)
    got = await peers.manifest(OWNER, "team/app", "1.0", SOURCE, 30.9, LIMITS)
    assert (got.digest, got.content, got.validated_at, got.stale) == (MANIFEST_DIGEST, MANIFEST, 1.0, None)
    target = asked[0].url.raw_path.decode()
    assert target == peer_manifest_target("team/app", "1.0", SOURCE, 30.9)
    assert target.endswith("/manifests/1.0?source=anonymous%2Fx%2Fteam%2Fapp&max-age=30")  # never staler
    await peers.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(("answer", "why"), [
    (lambda r: httpx.Response(200, headers={"docker-content-digest": MANIFEST_DIGEST, "content-type": OCI_MANIFEST},
                              content=MANIFEST), "not signed"),  # whoever wrote a heartbeat: no fleet secret
    (lambda r: signed_answer(r, secret="another-fleets"), "not signed"),
    (lambda r: signed_answer(r, content=MANIFEST.replace(b"a" * 64, b"b" * 64)), "do not match"),
    (lambda r: httpx.Response(200, headers={"content-length": str(5 * 1024 * 1024)},
                              stream=httpx.ByteStream(b"")), "manifest-max-size"),
    (lambda r: httpx.Response(200, stream=httpx.ByteStream(b" " * (5 * 1024 * 1024))), "manifest-max-size"),
])
async def test_a_manifest_answer_not_signed_not_matching_or_too_large_is_refused(anyio_backend, answer, why):
    peers = owner(answer)
    with pytest.raises(PeerAnswerRefused, match=why):
        await peers.manifest(OWNER, "team/app", "1.0", SOURCE, 0, LIMITS)
    await peers.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_owner_that_refuses_or_hangs_is_unavailable_within_the_deadline(anyio_backend):
    peers = owner(lambda r: httpx.Response(409, content=b'{"errors":[]}'))
    with pytest.raises(PeerUnavailable, match="HTTP 409"):
        await peers.manifest(OWNER, "team/app", "1.0", SOURCE, 0, LIMITS)
    await peers.aclose()

    async def hang(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(60)
        raise AssertionError("not reached")

    peers = owner(hang)
    started = time.monotonic()
    with pytest.raises(PeerUnavailable, match="did not answer 1.0 within 0.5 s"):
        await peers.manifest(OWNER, "team/app", "1.0", SOURCE, 0, UpstreamLimits(deadline=0.5))
    assert time.monotonic() - started < 5
    await peers.aclose()
