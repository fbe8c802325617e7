"""Misbehaving fronts for a real registry: cut, corrupt or throttle blob transfers, or redirect them to a "CDN".

A front is a small threaded HTTP server on 127.0.0.1 that forwards every request to a real
``docker-registry`` and, depending on its ``mode``, changes what blob GETs get back.
"""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

PASS, CUT, CORRUPT, REDIRECT, THROTTLE = "pass", "cut", "corrupt", "redirect", "throttle"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Threaded:
    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> None:
        self.httpd = _Server((host, 0), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BlobCDN(_Threaded):
    """Serves blobs at ``/blob/<digest>`` from a registry, and records the headers it was sent."""

    def __init__(self, registry_url: str, repository: str) -> None:
        self.registry_url = registry_url
        self.repository = repository
        self.requests: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                cdn: BlobCDN = self.server.owner  # type: ignore[attr-defined]
                cdn.requests.append({k.lower(): v for k, v in self.headers.items()})
                digest = self.path.rsplit("/", 1)[-1]
                upstream = httpx.get(f"{cdn.registry_url}/v2/{cdn.repository}/blobs/{digest}", follow_redirects=True)
                self.send_response(upstream.status_code)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

        super().__init__(Handler)

    @property
    def url(self) -> str:
        # "localhost", not 127.0.0.1: another host name, as a CDN is
        return f"http://localhost:{self.port}"


class FaultyFront(_Threaded):
    """Forwards to ``registry_url``; blob GETs are cut, corrupted, throttled or redirected as ``mode`` says.

    THROTTLE sends a blob body in ``throttle_chunk`` pieces with ``throttle_delay`` seconds between them,
    so a test can act (kill the proxy, fill its disk) while a download is in flight.

    With ``basic_auth=(user, password)`` the front itself demands that login, so the proxy
    sends ``Authorization`` to it (and must not carry it along a redirect to the CDN).
    """

    def __init__(self, registry_url: str, mode: str = PASS, basic_auth: tuple[str, str] | None = None,
                 cdn: BlobCDN | None = None) -> None:
        self.registry_url = registry_url
        self.mode = mode
        self.cdn = cdn
        self.blob_gets = 0
        self.throttle_chunk = 256 * 1024
        self.throttle_delay = 0.02
        #: headers added to every answer (e.g. Docker Hub's ratelimit-limit / ratelimit-remaining)
        self.extra_headers: dict[str, str] = {}
        #: answer manifest requests with this status instead (e.g. 429) when set
        self.manifest_status: int | None = None
        #: seconds every manifest request waits before it is forwarded (a slow upstream: concurrent
        #: revalidations overlap for sure)
        self.manifest_delay = 0.0
        expected = "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode() if basic_auth else None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self, method: str) -> None:
                front: FaultyFront = self.server.owner  # type: ignore[attr-defined]
                if expected and self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="front"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if front.manifest_status is not None and "/manifests/" in self.path:
                    self.send_response(front.manifest_status)
                    for key, value in front.extra_headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if front.manifest_delay and "/manifests/" in self.path:
                    time.sleep(front.manifest_delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
                upstream = httpx.request(method, front.registry_url + self.path, headers=headers)
                body = upstream.content
                is_blob = "/blobs/sha256:" in self.path and method == "GET" and upstream.status_code == 200
                if is_blob:
                    front.blob_gets += 1
                if is_blob and front.mode == REDIRECT and front.cdn is not None:
                    self.send_response(307)
                    self.send_header("Location", f"{front.cdn.url}/blob/{self.path.rsplit('/', 1)[-1]}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(key, value)
                for key, value in front.extra_headers.items():
                    self.send_header(key, value)
                # a HEAD answer has no body: its length is the one the registry announced
                length = upstream.headers.get("content-length", "0") if method == "HEAD" else str(len(body))
                self.send_header("Content-Length", length)
                self.end_headers()
                if method == "HEAD":
                    return
                if is_blob and front.mode == CUT:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if is_blob and front.mode == THROTTLE:
                    try:
                        for offset in range(0, len(body), front.throttle_chunk):
                            self.wfile.write(body[offset:offset + front.throttle_chunk])
                            self.wfile.flush()
                            time.sleep(front.throttle_delay)
                    except (BrokenPipeError, ConnectionResetError):  # the proxy went away (or was killed)
                        self.close_connection = True
                    return
                if is_blob and front.mode == CORRUPT:
                    middle = len(body) // 2
                    body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._forward("GET")

            def do_HEAD(self):  # noqa: N802
                self._forward("HEAD")

        super().__init__(Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"
