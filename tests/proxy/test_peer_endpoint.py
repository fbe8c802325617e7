"""The peer endpoint's refusals for manifests, in process (the member's handlers are stand-ins that record what
they were asked; tests/scale_out/test_fleet.py asks real nodes): only signed requests, only for this node's own
source, a tag or digest and whole seconds of max-age; an answer leaves signed for the request it answers."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from regcache.proxy.core.fleet import (
    ANSWER_HEADER,
    SIGNATURE_HEADER,
    VALIDATED_HEADER,
    signature,
    verify_manifest_answer,
)
from regcache.proxy.core.oci import OCI_MANIFEST
from regcache.proxy.http.errors import RegistryError
from regcache.proxy.http.fleet import PeerEndpoint
from regcache.proxy.upstream.peer import PEER_PREFIX, peer_manifest_target

SECRET = "the-fleet-secret"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "c" * 64, "size": 7}, "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
SOURCE = "anonymous/r.example/team/app"


@dataclass
class Cache:
    """What the endpoint asks of the cache: the rule for a name, and the source it reads from."""

    source_of_rule: str = SOURCE
    metrics: None = None
    resolved: list[str] = field(default_factory=list)

    async def resolve(self, name: str) -> str:
        self.resolved.append(name)
        return name

    def source(self, match: str) -> str:
        return self.source_of_rule


def node(cache: Cache) -> tuple[TestClient, list[tuple[str, str, float]]]:
    asked: list[tuple[str, str, float]] = []

    async def blob(request: Request, name: str, digest: str) -> Response:
        asked.append((name, digest, -1))
        return Response(b"blob")

    async def manifest(request: Request, name: str, reference: str, max_age: float) -> Response:
        asked.append((name, reference, max_age))
        return Response(MANIFEST, headers={"Docker-Content-Digest": MANIFEST_DIGEST, "Content-Type": OCI_MANIFEST,
                                           VALIDATED_HEADER: "1700000000.000"})

    async def registry_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RegistryError)
        return Response(exc.body(), exc.status)

    endpoint = PeerEndpoint(cache, SECRET, blob, manifest)  # type: ignore[arg-type]

    async def route(request: Request) -> Response:  # as the registry app routes it
        return await endpoint(request)

    app = Starlette(routes=[Route(PEER_PREFIX + "{path:path}", route, methods=["GET"])],
                    exception_handlers={RegistryError: registry_error})
    return TestClient(app), asked


def get(client: TestClient, target: str, secret: str = SECRET, when: float | None = None):
    header = signature(secret, "GET", target, "node-x", int(time.time() if when is None else when))
    return client.get(target, headers={SIGNATURE_HEADER: header}), header


def test_a_signed_manifest_request_for_this_nodes_source_is_answered_and_the_answer_is_signed():
    client, asked = node(Cache())
    target = peer_manifest_target("team/app", "1.0", SOURCE, 30)
    answer, request_signature = get(client, target)
    assert answer.status_code == 200 and asked == [("team/app", "1.0", 30.0)]
    got = verify_manifest_answer(SECRET, request_signature, answer.content, answer.headers["docker-content-digest"],
                                 answer.headers["content-type"], answer.headers[VALIDATED_HEADER], "",
                                 answer.headers[ANSWER_HEADER], time.time())
    assert got.digest == MANIFEST_DIGEST and got.validated_at == 1700000000.0


def test_unsigned_forged_stale_or_foreign_source_manifest_requests_are_refused_and_nothing_is_fetched():
    client, asked = node(Cache())
    target = peer_manifest_target("team/app", "1.0", SOURCE, 0)
    assert client.get(target).status_code == 401
    assert get(client, target, secret="not-the-fleets")[0].status_code == 401
    assert get(client, target, when=time.time() - 3600)[0].status_code == 401
    other = peer_manifest_target("team/app", "1.0", "anonymous/elsewhere.example/team/app", 0)
    assert get(client, other)[0].status_code == 409  # this node's rule reads another source
    assert asked == []


def test_malformed_manifest_requests_are_refused_before_any_rule_is_looked_up():
    cache = Cache()
    client, asked = node(cache)
    for target in (f"{PEER_PREFIX}team/app/manifests/not%20a%20tag?source=x&max-age=0",
                   f"{PEER_PREFIX}team/app/manifests/sha256:abc?source=x&max-age=0",
                   f"{PEER_PREFIX}team/app/manifests/1.0?max-age=0",
                   f"{PEER_PREFIX}team/app/manifests/1.0?source=x&max-age=-1",
                   f"{PEER_PREFIX}team/app/manifests/1.0?source=x&max-age=1e9",
                   f"{PEER_PREFIX}team/app/manifests/1.0?source=x&max-age=99999999999",
                   f"{PEER_PREFIX}Team/app/manifests/1.0?source=x&max-age=0",
                   f"{PEER_PREFIX}team/app/tags/list?source=x"):
        assert get(client, target)[0].status_code == 400, target
    assert asked == [] and cache.resolved == []
