"""A loopback HTTP server that records every request it receives: the "internal service" an SSRF would
reach, or (when a test allows its origin) a blob CDN or a token service.

Every request is recorded (method, path with its query, headers) before it is answered with ``status``,
``headers`` and ``body``, whatever was asked.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Captured:
    method: str
    path: str  # with the query string
    headers: dict[str, str]  # names in lower case


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class CaptureServer:
    """``requests`` lists what reached it; a test asserts it empty where regcache must never connect."""

    def __init__(self, body: bytes = b"internal secret", status: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        self.body = body
        self.status = status
        self.headers = dict(headers or {"Content-Type": "text/plain"})
        self.requests: list[Captured] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                owner.requests.append(Captured(self.command, self.path,
                                               {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(owner.status)
                for key, value in owner.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(owner.body)

            do_GET = do_HEAD = do_POST = _answer  # noqa: N815

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"capture-{self.port}", daemon=True)

    @classmethod
    def token_service(cls, token: str = "captured-token", expires_in: object = 300) -> CaptureServer:
        """Answers every request with a bearer token, as a registry's token service (its realm) does."""
        body = json.dumps({"token": token, "expires_in": expires_in}).encode()  # NaN/Infinity as Python writes them
        return cls(body, headers={"Content-Type": "application/json"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return self.url

    def start(self) -> CaptureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
