"""A small registry with the OCI referrers API, under uvicorn on 127.0.0.1 (docker-registry 2.8 has none).

It serves manifests and blobs put into it by digest (and tags), and answers
``GET /v2/<name>/referrers/<digest>`` with an OCI index of the stored manifests whose ``subject`` is
that digest, filtered by ``artifactType`` with ``OCI-Filters-Applied`` as the spec says. ``answer``
overrides the referrers answer (status, content type, body) to play a broken upstream.
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import parse_qs

from tests.helpers.loopback_server import LoopbackServer, Receive, Scope, Send

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_PATH = re.compile(r"/v2/(?P<repo>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ReferrersRegistry:
    """Manifests and blobs per repository, with a referrers endpoint; ``requests`` logs (method, path)."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}  # (repo, digest or tag) -> (type, bytes)
        self.blobs: dict[str, bytes] = {}
        #: (status, content type, body) to answer every referrers request with, instead of the real index
        self.answer: tuple[int, str, bytes] | None = None
        self.requests: list[tuple[str, str]] = []
        self.server = LoopbackServer(self.app)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def url(self) -> str:
        return self.server.url

    def put_manifest(self, repository: str, media_type: str, data: bytes, tag: str | None = None) -> str:
        digest = digest_of(data)
        self.manifests[(repository, digest)] = (media_type, data)
        if tag:
            self.manifests[(repository, tag)] = (media_type, data)
        return digest

    def put_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = data
        return digest

    def start(self) -> ReferrersRegistry:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def _referrers(self, repository: str, subject: str, artifact_type: str | None) -> bytes:
        found = []
        for (repo, ref), (media_type, data) in self.manifests.items():
            if repo != repository or not ref.startswith("sha256:"):
                continue
            manifest = json.loads(data)
            if (manifest.get("subject") or {}).get("digest") != subject:
                continue
            kind = manifest.get("artifactType") or manifest.get("config", {}).get("mediaType")
            if artifact_type is not None and kind != artifact_type:
                continue
            found.append({"mediaType": media_type, "digest": ref, "size": len(data), "artifactType": kind,
                          **({"annotations": manifest["annotations"]} if manifest.get("annotations") else {})})
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}).encode()

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        method, path = scope["method"], scope["path"]
        self.requests.append((method, path))
        if path in ("/v2/", "/v2"):
            await self._send(send, method, 200, "application/json", b"{}")
            return
        m = _PATH.fullmatch(path)
        if m is None:
            await self._send(send, method, 404, "application/json", b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
            return
        if m["kind"] == "referrers":
            if self.answer is not None:
                await self._send(send, method, *self.answer)
                return
            query = parse_qs(scope.get("query_string", b"").decode())
            artifact_type = query.get("artifactType", [None])[0]
            headers = [(b"oci-filters-applied", b"artifactType")] if artifact_type else []
            await self._send(send, method, 200, OCI_INDEX, self._referrers(m["repo"], m["ref"], artifact_type),
                             headers)
            return
        if m["kind"] == "blobs":
            data = self.blobs.get(m["ref"])
            found = None if data is None else ("application/octet-stream", data)
        else:
            found = self.manifests.get((m["repo"], m["ref"]))
        if found is None:
            await self._send(send, method, 404, "application/json", b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return
        media_type, data = found
        await self._send(send, method, 200, media_type, data, [(b"docker-content-digest", digest_of(data).encode())])

    @staticmethod
    async def _send(send: Send, method: str, status: int, media_type: str, body: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
