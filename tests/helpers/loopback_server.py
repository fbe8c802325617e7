"""An ASGI app under uvicorn on a free 127.0.0.1 port, on its own thread: the test fixtures' real servers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class LoopbackServer:
    """``app`` served over HTTP on 127.0.0.1 (``host`` may name it ``localhost``: another origin, same box)."""

    def __init__(self, app: App, host: str = "127.0.0.1") -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.hostname = host
        self._sock = sock
        self._server = uvicorn.Server(uvicorn.Config(app, interface="asgi3", log_config=None, access_log=False,
                                                     lifespan="off", timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve([sock])), daemon=True)

    @property
    def host(self) -> str:
        return f"{self.hostname}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> LoopbackServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the loopback server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(10)
        self._sock.close()


async def answer(send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
                 method: str = "GET") -> None:
    """Send one whole response (no body for HEAD, but its Content-Length)."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
