"""UpstreamClient against in-process fake registries (httpx.MockTransport)."""

from __future__ import annotations

import base64

import httpx
import pytest

from regcache.proxy.core.models import AuthPolicy, Upstream
from regcache.proxy.upstream.client import (
    Credentials,
    UpstreamAuthError,
    UpstreamClient,
    UpstreamNotFound,
    UpstreamUnreachable,
)

pytestmark = pytest.mark.anyio

UP = Upstream("reg.test", "https://reg.test", AuthPolicy.BOTH)
#: the same upstream with its token service's origin allowed: only such a realm receives the credential set
UP_WITH_REALM = Upstream("reg.test", "https://reg.test", AuthPolicy.BOTH, allowed_origins=("https://auth.test:443",))
CREDS = Credentials("my-creds", "alice", "s3cret")
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'


@pytest.fixture
def anyio_backend():
    return "asyncio"


def bearer_registry(seen: list[httpx.Request], require_user: str | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.test":
            auth = request.headers.get("authorization")
            if require_user and auth != "Basic " + base64.b64encode(require_user.encode()).decode():
                return httpx.Response(401)
            scope = request.url.params["scope"]
            return httpx.Response(200, json={"token": f"tok-{scope}", "expires_in": 300})
        if request.headers.get("authorization", "").startswith("Bearer tok-"):
            if request.url.path.endswith("/manifests/latest"):
                return httpx.Response(200, content=MANIFEST, headers={
                    "content-type": "application/vnd.oci.image.manifest.v1+json",
                    "docker-content-digest": "sha256:abc"})
            if request.url.path.endswith("/tags/list"):
                if "last" not in request.url.params:
                    return httpx.Response(200, json={"tags": ["a", "b"]},
                                          headers={"link": '</v2/lib/app/tags/list?n=2&last=b>; rel="next"'})
                return httpx.Response(200, json={"tags": ["c"]})
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        return httpx.Response(401, headers={
            "www-authenticate": 'Bearer realm="https://auth.test/token",service="reg.test"'})

    return handler


async def test_anonymous_bearer_flow_and_token_cache():
    seen: list[httpx.Request] = []
    client = UpstreamClient(httpx.MockTransport(bearer_registry(seen)))
    got = await client.manifest(UP, "lib/app", "latest", None)
    assert got.content == MANIFEST and got.digest == "sha256:abc"
    assert got.media_type == "application/vnd.oci.image.manifest.v1+json"
    token_request = next(r for r in seen if r.url.host == "auth.test")
    assert token_request.url.params["scope"] == "repository:lib/app:pull"
    assert token_request.url.params["service"] == "reg.test"
    assert "authorization" not in token_request.headers  # anonymous
    seen.clear()
    await client.manifest(UP, "lib/app", "latest", None)
    assert len(seen) == 1 and seen[0].headers["authorization"] == "Bearer tok-repository:lib/app:pull"
    assert client.token_requests == 1
    await client.aclose()


async def test_bearer_with_credentials_and_refusal():
    seen: list[httpx.Request] = []
    client = UpstreamClient(httpx.MockTransport(bearer_registry(seen, require_user="alice:s3cret")))
    got = await client.manifest(UP_WITH_REALM, "lib/app", "latest", CREDS)
    assert got.content == MANIFEST
    wrong = Credentials("bad-creds", "alice", "wrong")
    with pytest.raises(UpstreamAuthError) as info:
        await client.manifest(UP_WITH_REALM, "lib/app", "latest", wrong)
    assert "token service refused credential set 'bad-creds'" in str(info.value)
    assert "wrong" not in str(info.value) and "alice" not in str(info.value)
    await client.aclose()


async def test_tags_follow_link_pagination():
    client = UpstreamClient(httpx.MockTransport(bearer_registry([])))
    assert await client.tags(UP, "lib/app", None) == ["a", "b", "c"]
    await client.aclose()


async def test_not_found():
    client = UpstreamClient(httpx.MockTransport(bearer_registry([])))
    with pytest.raises(UpstreamNotFound):
        await client.manifest(UP, "lib/app", "nope", None)
    await client.aclose()


async def test_basic_auth_needs_credentials():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == "Basic " + base64.b64encode(b"alice:s3cret").decode():
            return httpx.Response(200, content=MANIFEST)
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="Registry"'})

    client = UpstreamClient(httpx.MockTransport(handler))
    assert (await client.manifest(UP, "lib/app", "latest", CREDS)).content == MANIFEST
    with pytest.raises(UpstreamAuthError, match="requires a login: attach a credential set"):
        await client.manifest(UP, "lib/app", "latest", None)
    with pytest.raises(UpstreamAuthError, match="refused the credentials of credential set 'x'"):
        await client.manifest(UP, "lib/app", "latest", Credentials("x", "alice", "nope"))
    await client.aclose()


async def test_redirect_to_another_host_drops_authorization():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "cdn.test":
            return httpx.Response(200, stream=httpx.ByteStream(b"blob-bytes"))
        if request.headers.get("authorization"):
            return httpx.Response(307, headers={"location": "https://cdn.test/blob?sig=1"})
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="r"'})

    client = UpstreamClient(httpx.MockTransport(handler))
    async with client.blob(UP, "lib/app", "sha256:" + "0" * 64, CREDS) as blob:
        assert b"".join([chunk async for chunk in blob.chunks()]) == b"blob-bytes"
    cdn = [r for r in seen if r.url.host == "cdn.test"]
    assert len(cdn) == 1 and "authorization" not in cdn[0].headers
    await client.aclose()


@pytest.mark.parametrize(("status", "text"), [(503, "answered HTTP 503"), (429, "rate-limiting")])
async def test_server_errors_are_unavailable(status, text):
    client = UpstreamClient(httpx.MockTransport(lambda r: httpx.Response(status)))
    with pytest.raises(UpstreamUnreachable, match=text) as info:
        await client.manifest(UP, "lib/app", "latest", None)
    assert info.value.status == status
    await client.aclose()


async def test_connection_refused_is_unavailable():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = UpstreamClient(httpx.MockTransport(handler))
    with pytest.raises(UpstreamUnreachable, match=r"upstream reg.test: unreachable \(connection failed\)"):
        await client.manifest(UP, "lib/app", "latest", None)
    await client.aclose()


def test_httpcore_still_has_the_read_size_we_tune():
    import httpcore

    from regcache.proxy.upstream.client import UPSTREAM_READ_BYTES

    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == UPSTREAM_READ_BYTES
