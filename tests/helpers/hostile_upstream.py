"""A hostile upstream registry: a small ASGI app under uvicorn on 127.0.0.1, for the trust tests.

It answers HEAD 200 for any manifest or blob (claiming whatever digest was asked), serves the manifest
bytes it was given under whatever media type it was told, and sends blobs as slow, wrong bytes. For the
outbound-policy tests it also redirects a repository's requests anywhere, challenges for a token from any
realm, links its tag list's next page anywhere, and serves https when given a certificate.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_PATH = re.compile(r"/v2/(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")


class HostileUpstream:
    """``manifests[(repository, reference)] = (content type, bytes)``; every other manifest GET is a 404.

    Tag lists, their ``Link`` headers, extra manifest headers and referrers answers are whatever a test sets.

    Blob GETs send ``blob_size`` bytes of zeros, ``chunk`` bytes every ``delay`` seconds; ``requests``
    records (method, path) of every request.
    """

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate file, key file) to serve https instead of http."""
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blob_size = 4 * 1024 * 1024
        self.chunk = 64 * 1024
        self.delay = 0.05
        self.requests: list[tuple[str, str]] = []
        #: repositories whose manifest GETs never end (1 MiB chunks until the client hangs up)
        self.endless: set[str] = set()
        #: repository -> seconds between the single bytes of its manifest GETs
        self.drip: dict[str, float] = {}
        #: repository -> the body of its tag list
        self.tag_lists: dict[str, bytes] = {}
        #: the Content-Length blob GETs announce (None: the real size; -1: none, the body is chunked)
        self.blob_announce: int | None = None
        #: repositories whose blob GETs never end (zeros, chunked, until the client hangs up)
        self.endless_blobs: set[str] = set()
        #: seconds blob GETs wait before their response starts
        self.blob_header_delay = 0.0
        #: repository -> the Link header its tag list is sent with (pagination pointing anywhere)
        self.tag_list_links: dict[str, str] = {}
        #: (repository, reference) -> extra headers of its manifest GET (a Docker-Content-Digest of any kind)
        self.manifest_headers: dict[tuple[str, str], list[tuple[bytes, bytes]]] = {}
        #: repository -> (content type, body) of every referrers GET in it
        self.referrers: dict[str, tuple[str, bytes]] = {}
        #: repository -> where its manifest and blob requests are redirected (307 with this Location)
        self.redirects: dict[str, str] = {}
        #: repository -> the URL its tag list's Link header gives as the next page
        self.tag_links: dict[str, str] = {}
        #: when set, requests without a Bearer token get a 401 challenge naming this token service (realm)
        self.realm: str | None = None
        #: the headers of every request, names in lower case (in the order of ``requests``)
        self.request_headers: list[dict[str, str]] = []
        self.scheme = "https" if tls else "http"
        #: the Content-Type of tag lists
        self.tag_list_media_type = "application/json"
        #: (ratelimit-limit, ratelimit-remaining) sent with every answer: raw bytes, whatever HTTP lets through
        self.rate_limit: tuple[bytes, bytes] | None = None
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stopping = False
        self._server = uvicorn.Server(uvicorn.Config(self.app, interface="asgi3", log_config=None, access_log=False,
                                                     lifespan="off", timeout_graceful_shutdown=1,
                                                     ssl_certfile=tls[0] if tls else None,
                                                     ssl_keyfile=tls[1] if tls else None))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve([sock])), daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self) -> HostileUpstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the hostile upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stopping = True  # ends the endless and dripping answers still being sent
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        method, path = scope["method"], scope["path"]
        self.requests.append((method, path))
        if self.rate_limit is not None:
            send = self._with_rate_limit(send, self.rate_limit)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.request_headers.append(headers)
        if self.realm is not None and not headers.get("authorization", "").startswith("Bearer "):
            challenge = f'Bearer realm="{self.realm}",service="hostile"'.encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"www-authenticate", challenge), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if path in ("/v2/", "/v2"):
            await self._answer(send, 200, b"{}", "application/json")
            return
        if path.endswith("/tags/list") and path[len("/v2/"):-len("/tags/list")] in self.tag_lists:
            repository = path[len("/v2/"):-len("/tags/list")]
            if repository in self.tag_links and not scope.get("query_string"):  # the first page only
                link: str | None = f'<{self.tag_links[repository]}>; rel="next"'
            else:
                link = self.tag_list_links.get(repository)
            await self._answer(send, 200, self.tag_lists[repository], self.tag_list_media_type,
                               [(b"link", link.encode())] if link else [])
            return
        referrers = re.fullmatch(r"/v2/(?P<repo>.+)/referrers/[^/]+", path)
        if referrers is not None and referrers["repo"] in self.referrers:
            media_type, body = self.referrers[referrers["repo"]]
            await self._answer(send, 200, body, media_type)
            return
        m = _PATH.fullmatch(path)
        if m is None:
            await self._answer(send, 404, b"", "text/plain")
            return
        if m["repo"] in self.redirects:
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", self.redirects[m["repo"]].encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if method == "GET" and m["kind"] == "manifests" and (m["repo"] in self.endless or m["repo"] in self.drip):
            # no Content-Length and no end: 1 MiB at a time, or a byte now and then, until the client hangs up
            chunk, pause = (b" " * (1024 * 1024), 0.0) if m["repo"] in self.endless else (b" ", self.drip[m["repo"]])
            await self._unending(receive, send, chunk, pause)
            return
        ref = m["ref"]
        if method == "HEAD":  # "yes, I have that", whatever it is
            headers = [(b"docker-content-digest", ref.encode())] if ":" in ref else []
            size = self.blob_size if m["kind"] == "blobs" else len(next(iter(self.manifests.values()), ("", b""))[1])
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(size).encode()), *headers]})
            await send({"type": "http.response.body", "body": b""})
            return
        if m["kind"] == "manifests":
            found = self.manifests.get((m["repo"], ref))
            if found is None:
                await self._answer(send, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}',
                                   "application/json")
                return
            media_type, content = found
            await self._answer(send, 200, content, media_type, self.manifest_headers.get((m["repo"], ref), []))
            return
        await asyncio.sleep(self.blob_header_delay)
        if m["repo"] in self.endless_blobs:
            await self._unending(receive, send, bytes(1024 * 1024), 0.0)
            return
        announce = self.blob_size if self.blob_announce is None else self.blob_announce
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*([(b"content-length", str(announce).encode())] if announce >= 0 else []),
                                (b"content-type", b"application/octet-stream")]})
        sent = 0
        while sent < self.blob_size:
            n = min(self.chunk, self.blob_size - sent)
            await send({"type": "http.response.body", "body": bytes(n), "more_body": True})
            sent += n
            await asyncio.sleep(self.delay)
        await send({"type": "http.response.body", "body": b""})

    async def _unending(self, receive: Receive, send: Send, chunk: bytes, pause: float) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())  # owned here, cancelled below
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/vnd.oci.image.manifest.v1+json")]})
            sent = 0
            while not gone.is_set() and not self._stopping and sent < 2 * 1024**3:  # 2 GiB at most
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
                await asyncio.sleep(pause)
        finally:
            watcher.cancel()

    @staticmethod
    def _with_rate_limit(send: Send, rate_limit: tuple[bytes, bytes]) -> Send:
        """``send`` adding the ratelimit-* headers to the start of the answer."""
        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"ratelimit-limit", rate_limit[0]),
                                                  (b"ratelimit-remaining", rate_limit[1])]}
            await send(message)

        return sending

    @staticmethod
    async def _answer(send: Send, status: int, body: bytes, media_type: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media_type.encode()),
                                (b"content-length", str(len(body)).encode()), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})
