"""Upstream profiles: a real docker-registry behind a front that answers as a public registry does on the wire.

Each built-in upstream of regcache has its own way of answering (from its public documentation and what
clients see); a :class:`ProfileFront` reproduces it in front of a real ``docker-registry`` (anonymous, or
with token auth and its :class:`~tests.registries.tokens.TokenIssuer`), on 127.0.0.1:

* ``realm_path``: the token service on the registry's own origin (ghcr.io ``/token``, quay.io ``/v2/auth``,
  gcr.io ``/v2/token``, ECR Public ``/token/``): the registry's challenges name it, and it is passed to
  the real issuer. Without it a token registry's challenge names the issuer on its own port: another
  origin, as Docker Hub's ``auth.docker.io``.
* ``data_host``: blob GETs the registry authorized are answered ``307`` to a :class:`DataHost` on another
  origin (``localhost``) under a presigned URL with a query-string signature (Docker Hub's and MCR's
  CDNs, ECR's S3); the data host refuses a request that carries ``Authorization``.
* ``redirect_all_to``: every request, manifests included, is answered ``307`` to another registry host
  (registry.k8s.io redirects to regional mirrors).
* ``rate_limit``: Docker Hub's ``ratelimit-limit``/``ratelimit-remaining`` headers on manifest answers,
  and ``throttled``: a ``429`` with ``Retry-After`` instead of any manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from urllib.parse import parse_qs

import httpx

from tests.helpers.loopback_server import LoopbackServer, Receive, Scope, Send, answer

_BLOB = re.compile(r"/v2/(?P<repo>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)")
_MANIFEST = re.compile(r"/v2/(?P<repo>.+)/manifests/[^/]+")
#: request headers passed on to the registry (and answer headers passed back)
_REQUEST_HEADERS = (b"authorization", b"accept", b"range")
_ANSWER_HEADERS = (b"content-type", b"docker-content-digest", b"www-authenticate", b"link", b"location",
                   b"docker-distribution-api-version", b"content-range")


class DataHost:
    """A blob CDN / object store on another origin: serves what a front put there, under a presigned URL.

    ``requests`` records the headers of every request; one carrying ``Authorization`` is refused (400), as
    S3 refuses a request that is both presigned and signed.
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: list[dict[str, str]] = []
        self._key = secrets.token_bytes(16)
        self.server = LoopbackServer(self.app, host="localhost")

    @property
    def origin(self) -> str:
        return self.server.url

    def presign(self, data: bytes) -> str:
        """Keep ``data`` and return its presigned URL (``X-Amz-Signature`` in the query, as S3's)."""
        name = secrets.token_hex(8)
        self.objects[name] = data
        signature = hmac.new(self._key, name.encode(), hashlib.sha256).hexdigest()
        return f"{self.origin}/objects/{name}?X-Amz-Expires=300&X-Amz-Signature={signature}"

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(headers)
        name = scope["path"].rsplit("/", 1)[-1]
        signature = parse_qs(scope["query_string"].decode()).get("X-Amz-Signature", [""])[0]
        if "authorization" in headers:
            await answer(send, 400, b"<Error><Code>InvalidArgument</Code>Only one auth mechanism allowed</Error>")
        elif name not in self.objects or not hmac.compare_digest(
                signature, hmac.new(self._key, name.encode(), hashlib.sha256).hexdigest()):
            await answer(send, 403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
        else:
            await answer(send, 200, self.objects[name], [(b"content-type", b"application/octet-stream")],
                         scope["method"])

    def start(self) -> DataHost:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


class ProfileFront:
    """A public registry's behaviour in front of the real ``registry_url`` (see the module doc)."""

    def __init__(self, registry_url: str, *, issuer_url: str | None = None, realm_path: str | None = None,
                 data_host: DataHost | None = None, redirect_all_to: str | None = None,
                 rate_limit: int | None = None) -> None:
        self.registry_url = registry_url
        self.issuer_url = issuer_url
        self.realm_path = realm_path
        self.data_host = data_host
        self.redirect_all_to = redirect_all_to
        #: the budget announced in ratelimit-* headers (None: no headers); each manifest GET spends one
        self.rate_limit = rate_limit
        self.remaining = rate_limit or 0
        #: answer every manifest request 429 with Retry-After
        self.throttled = False
        #: (method, path, query) of every request, and the headers of each
        self.requests: list[tuple[str, str, str]] = []
        self.request_headers: list[dict[str, str]] = []
        self.server = LoopbackServer(self.app)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> ProfileFront:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def token_requests(self) -> list[tuple[str, str, str]]:
        return [r for r in self.requests if self.realm_path and r[1] == self.realm_path]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path, query = scope["method"], scope["path"], scope["query_string"].decode()
        self.requests.append((method, path, query))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.request_headers.append(headers)
        if self.redirect_all_to is not None:
            location = f"{self.redirect_all_to}{path}" + (f"?{query}" if query else "")
            await answer(send, 307, headers=[(b"location", location.encode())], method=method)
            return
        if self.realm_path is not None and path == self.realm_path:
            await self._forward(send, method, f"{self.issuer_url}/token", query, scope)
            return
        manifest = _MANIFEST.fullmatch(path)
        if manifest is not None and self.throttled:
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}'
            await answer(send, 429, body, [(b"content-type", b"application/json"), (b"retry-after", b"3600"),
                                          *self._rate_limit_headers()], method)
            return
        blob = _BLOB.fullmatch(path)
        if blob is not None and method == "GET" and self.data_host is not None:
            async with httpx.AsyncClient() as client:
                found = await client.get(f"{self.registry_url}{path}", headers=_passed(scope))
            if found.status_code == 200:  # authorized by the registry: the bytes go to the data host
                location = self.data_host.presign(found.content)
                await answer(send, 307, headers=[(b"location", location.encode())])
            else:
                await self._answer_with(send, method, found)
            return
        if manifest is not None and method == "GET" and self.rate_limit is not None:
            self.remaining = max(self.remaining - 1, 0)
        await self._forward(send, method, f"{self.registry_url}{path}", query, scope,
                            self._rate_limit_headers() if manifest is not None else [])

    def _rate_limit_headers(self) -> list[tuple[bytes, bytes]]:
        if self.rate_limit is None:
            return []
        return [(b"ratelimit-limit", f"{self.rate_limit};w=21600".encode()),
                (b"ratelimit-remaining", f"{self.remaining};w=21600".encode())]

    async def _forward(self, send: Send, method: str, url: str, query: str, scope: Scope,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
        async with httpx.AsyncClient() as client:
            found = await client.request(method, url + (f"?{query}" if query else ""), headers=_passed(scope))
        await self._answer_with(send, method, found, extra)

    async def _answer_with(self, send: Send, method: str, found: httpx.Response,
                           extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = []
        for name, value in found.headers.raw:
            if name.lower() not in _ANSWER_HEADERS:
                continue
            if name.lower() == b"www-authenticate" and self.realm_path is not None and self.issuer_url:
                # the registry's challenge names the issuer: name this origin's token path instead
                value = value.replace(f"{self.issuer_url}/token".encode(), f"{self.url}{self.realm_path}".encode())
            headers.append((name, value))
        if method == "HEAD":  # the registry's own length, without a body
            length = found.headers.get("content-length", "0")
            await send({"type": "http.response.start", "status": found.status_code,
                        "headers": [(b"content-length", length.encode()), *headers, *(extra or [])]})
            await send({"type": "http.response.body", "body": b""})
            return
        await answer(send, found.status_code, found.content, [*headers, *(extra or [])])


def _passed(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k.lower() in _REQUEST_HEADERS}
