"""An in-process upstream registry for ``httpx.MockTransport``: the pull decisions' fast tests use it instead
of a real docker-registry (those run in the integration tests). Every request is recorded."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.oci import OCI_INDEX, OCI_MANIFEST
from regcache.proxy.pull.cache import PullThroughCache
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import AsyncStateStore, StateStore
from regcache.proxy.storage.blobs import BlobStore
from regcache.proxy.upstream.client import UpstreamClient

LOGIN_SERVER = "fake.test"
_PATH = re.compile(r"/v2/(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    """Manifests and blobs per repository; ``status`` (e.g. 503, 429) answers every request while set."""

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None
    #: (user, password) that every request must log in with (HTTP Basic), when set
    login: tuple[str, str] | None = None

    def put_blob(self, repository: str, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[(repository, digest)] = data
        return digest

    def put_manifest(self, repository: str, tag: str | None, doc: dict, media_type: str = OCI_MANIFEST) -> str:
        content = json.dumps(doc).encode()
        digest = digest_of(content)
        self.manifests[(repository, digest)] = (media_type, content)
        if tag is not None:
            self.manifests[(repository, tag)] = (media_type, content)
        return digest

    def put_image(self, repository: str, tag: str | None, layer: bytes = b"layer bytes") -> str:
        """A one-layer OCI image; returns its manifest digest."""
        config = self.put_blob(repository, b'{"architecture":"amd64","os":"linux"}')
        blob = self.put_blob(repository, layer)
        return self.put_manifest(repository, tag, {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob,
                        "size": len(layer)}]})

    def put_index(self, repository: str, tag: str, children: dict[str, str]) -> str:
        """An OCI index of ``{"linux/amd64": manifest digest, ...}``."""
        return self.put_manifest(repository, tag, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d, "size": len(self.manifests[(repository, d)][1]),
             "platform": {"os": p.split("/")[0], "architecture": p.split("/")[1]}}
            for p, d in children.items()]}, OCI_INDEX)

    def count(self, method: str, kind: str | None = None) -> int:
        return sum(1 for m, path in self.requests if m == method and (kind is None or f"/{kind}/" in path))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if self.status is not None:
            return httpx.Response(self.status)
        if self.login is not None:
            expected = "Basic " + base64.b64encode(":".join(self.login).encode()).decode()
            if request.headers.get("authorization") != expected:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        m = _PATH.fullmatch(request.url.path)
        if m is None:
            return httpx.Response(404)
        key = (m["repo"], m["ref"])
        if m["kind"] == "manifests":
            if key not in self.manifests:
                return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
            media_type, content = self.manifests[key]
            headers = {"Content-Type": media_type, "Docker-Content-Digest": digest_of(content),
                       "Content-Length": str(len(content))}
            return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else content)
        if key not in self.blobs:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN"}]})
        data = self.blobs[key]
        # a stream, as the network gives it: the blob store reads it with aiter_raw()
        return httpx.Response(200, headers={"Content-Length": str(len(data))},
                              stream=httpx.ByteStream(b"" if request.method == "HEAD" else data))


@asynccontextmanager
async def fake_engine(home: Path, registry: FakeRegistry, rules: dict[str, str]) -> AsyncIterator[PullThroughCache]:
    """A PullThroughCache over ``registry`` on ``home``; ``rules`` maps a target to a source path on it."""
    control = ControlPlane.open(home)
    control.add_upstream(LOGIN_SERVER, f"http://{LOGIN_SERVER}", "both")
    for n, (target, path) in enumerate(rules.items()):
        control.create_rule(f"rule-{n:03d}", f"{LOGIN_SERVER}/{path}", target)
    control.close()
    store = StateStore(home)
    state = AsyncStateStore(store)
    upstream = UpstreamClient(httpx.MockTransport(registry.handle))
    try:
        async with anyio.create_task_group() as downloads:
            yield PullThroughCache(state, upstream, BlobStore(home, state, downloads), SecretResolver())
    finally:
        await upstream.aclose()
        store.close()
