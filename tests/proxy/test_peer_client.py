"""A fleet member's answer is bounded like an upstream's: a heartbeat's address is only as trustworthy as the bucket
(in-process transport: the bounds, not the network, are under test here; tests/scale_out/test_fleet.py runs nodes)."""

from __future__ import annotations

import httpx
import pytest

from regcache.proxy.core.fleet import Member
from regcache.proxy.core.settings import UpstreamLimits
from regcache.proxy.upstream.client import UpstreamProtocolError
from regcache.proxy.upstream.peer import PeerClient, PeerUnavailable

OWNER = Member("node-b", "http://10.0.0.2:5000", "fp", "0.1.0", 1)
DIGEST = "sha256:" + "0" * 64
LIMITS = UpstreamLimits(blob_bytes=1024 * 1024)


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
    await peers.aclose()
