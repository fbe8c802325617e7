"""A hostile upstream registry: a small ASGI app under uvicorn on 127.0.0.1, for the trust tests.

It answers HEAD 200 for any manifest or blob (claiming whatever digest was asked), serves the manifest
bytes it was given under whatever media type it was told, and sends blobs as slow, wrong bytes.
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

    Blob GETs send ``blob_size`` bytes of zeros, ``chunk`` bytes every ``delay`` seconds; ``requests``
    records (method, path) of every request.
    """

    def __init__(self) -> None:
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
                                                     lifespan="off", timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve([sock])), daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

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
        if path in ("/v2/", "/v2"):
            await self._answer(send, 200, b"{}", "application/json")
            return
        if path.endswith("/tags/list") and path[len("/v2/"):-len("/tags/list")] in self.tag_lists:
            await self._answer(send, 200, self.tag_lists[path[len("/v2/"):-len("/tags/list")]],
                               self.tag_list_media_type)
            return
        m = _PATH.fullmatch(path)
        if m is None:
            await self._answer(send, 404, b"", "text/plain")
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
            await self._answer(send, 200, content, media_type)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(self.blob_size).encode()),
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
    async def _answer(send: Send, status: int, body: bytes, media_type: str) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
