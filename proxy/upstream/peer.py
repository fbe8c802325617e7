"""PeerClient: a node asking the fleet member that owns a blob to stream its single download, or the member that
owns a tag to (re)validate it (docs/scale-out.md).

The request names the client-side repository and the *source* (upstream repository and access) it is
for; the owner resolves the repository with its own rules, serves only if its source is the same, and
never forwards it again. Requests are signed with the fleet secret (regcache.proxy.core.fleet). A peer
that cannot be reached or answers 5xx before its body is :class:`PeerUnavailable`: the caller then
downloads on its own. Bytes are verified against the digest by the caller, as an upstream's are; a manifest
answer is read within the manifest size limit and the upstream deadline, and taken only when it is signed
for this request with the fleet secret and its bytes match its digest (anything else is PeerUnavailable).

Over TLS: a node that serves https (``serve --tls-cert``) is reached at an ``https://`` fleet-address, and its
certificate is verified against the ``fleet-ca`` bundle (else the system store); such a node never sends its
signed requests to a member advertising plain ``http://`` (the request and the blob would cross the network
in the clear): that member is unavailable to it, and it downloads on its own.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import anyio
import httpx

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.fleet import (
    ANSWER_HEADER,
    SIGNATURE_HEADER,
    STALE_REASON_HEADER,
    VALIDATED_HEADER,
    ManifestAnswer,
    Member,
    signature,
    verify_manifest_answer,
)
from regcache.proxy.core.settings import FLEET_CA_SETTING, MANIFEST_MAX_SIZE_SETTING, UpstreamLimits
from regcache.proxy.core.units import format_size
from regcache.proxy.upstream.client import UpstreamBlob
from regcache.proxy.upstream.tls import tls_error

#: the path every peer request goes to (the owner's registry app serves it beside /v2/)
PEER_PREFIX = "/_regcache/peer/v1/"
#: a peer that does not answer within this is skipped (the owner's own upstream wait is not bounded by it)
PEER_CONNECT_TIMEOUT = 2.0
#: a peer's body must keep moving; one that stalls this long is cut (its clients retry)
PEER_READ_TIMEOUT = 30.0
#: a manifest answer must be whole within this (or the upstream deadline, if shorter); then this node asks
#: the upstream itself, so an owner that hangs costs its askers at most this much (one manifest GET is < 1 s)
PEER_MANIFEST_WAIT = 8.0
#: the longest freshness window a manifest request passes on (seconds; a rule's freshness is far below it)
MAX_AGE_LIMIT = 10**9


class PeerUnavailable(Exception):
    """The owner could not be asked (unreachable, refused, 5xx): download on our own."""


class PeerAnswerRefused(PeerUnavailable):
    """The owner answered, but not something this node takes (unsigned, wrong bytes, too large)."""


def peer_target(repository: str, digest: str, source: str) -> str:
    """The path and query of a peer blob request (what is signed)."""
    return f"{PEER_PREFIX}{repository}/blobs/{digest}?source={quote(source, safe='')}"


def peer_manifest_target(repository: str, reference: str, source: str, max_age: float) -> str:
    """The path and query of a peer manifest request (what is signed): a tag or digest of ``source``, confirmed
    by the owner's upstream at most ``max_age`` seconds ago (whole seconds, rounded down: never staler)."""
    age = int(min(max(max_age, 0), MAX_AGE_LIMIT))
    return f"{PEER_PREFIX}{repository}/manifests/{reference}?source={quote(source, safe='')}&max-age={age}"


class PeerClient:
    """Signed requests from node ``node_id`` to the other members, with the fleet ``secret``."""

    def __init__(self, node_id: str, secret: str, transport: httpx.AsyncBaseTransport | None = None, *,
                 verify: ssl.SSLContext | None = None, https_only: bool = False) -> None:
        """``verify`` checks the members' certificates (None: the system store, through httpx's default);
        ``https_only`` (this node serves TLS) refuses members whose address is plain http."""
        self.node_id = node_id
        self._secret = secret
        self.https_only = https_only
        self._client = httpx.AsyncClient(
            transport=transport, follow_redirects=False, headers={"User-Agent": "regcache-peer"},
            verify=verify if verify is not None else True, trust_env=False,
            timeout=httpx.Timeout(PEER_READ_TIMEOUT, connect=PEER_CONNECT_TIMEOUT))

    async def aclose(self) -> None:
        await self._client.aclose()

    def _check_scheme(self, owner: Member) -> None:
        """A node serving https sends its signed requests only over https (they and the answers would cross the
        network in the clear)."""
        if self.https_only and not owner.address.startswith("https://"):
            raise PeerUnavailable(f"fleet member {owner.node_id} advertises {owner.address}, plain http, while this "
                                  f"node serves https: its fleet-address must be https:// too")

    @asynccontextmanager
    async def blob(self, owner: Member, repository: str, digest: str, source: str,
                   limits: UpstreamLimits) -> AsyncIterator[UpstreamBlob]:
        """Stream ``digest`` from ``owner``'s single download (or its store) for ``source``, bounded by the blob
        limits as an upstream's answer is (a heartbeat's address is only as trustworthy as the bucket)."""
        self._check_scheme(owner)
        target = peer_target(repository, digest, source)
        headers = {SIGNATURE_HEADER: signature(self._secret, "GET", target, self.node_id, int(time.time()))}
        request = self._client.build_request("GET", owner.address.rstrip("/") + target, headers=headers)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _unanswered(owner, exc) from None
        try:
            if response.status_code != 200:  # even a 404: our own upstream request then says what is wrong
                raise PeerUnavailable(f"fleet member {owner.node_id} answered HTTP {response.status_code}")
            length = response.headers.get("content-length")
            size = int(length) if length and length.isdigit() else None
            if size is not None and size > limits.blob_bytes:
                raise PeerUnavailable(f"fleet member {owner.node_id} announced {digest} larger than the blob limit")
            yield UpstreamBlob(f"fleet member {owner.node_id}", digest, response, size, limits)
        finally:
            await response.aclose()

    async def manifest(self, owner: Member, repository: str, reference: str, source: str, max_age: float,
                       limits: UpstreamLimits, expected: str | None = None) -> ManifestAnswer:
        """``reference`` (a tag, or the digest ``expected``) of ``source`` as ``owner`` has it, confirmed by its
        upstream at most ``max_age`` seconds ago unless it says it is stale; bounded like an upstream's answer
        (the manifest size limit, and the upstream deadline or :data:`PEER_MANIFEST_WAIT`, the shorter)."""
        self._check_scheme(owner)
        target = peer_manifest_target(repository, reference, source, max_age)
        signed = signature(self._secret, "GET", target, self.node_id, int(time.time()))
        request = self._client.build_request("GET", owner.address.rstrip("/") + target,
                                             headers={SIGNATURE_HEADER: signed})
        who = f"fleet member {owner.node_id}"
        wait = min(limits.deadline, PEER_MANIFEST_WAIT)
        try:
            with anyio.fail_after(wait):
                response = await self._client.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        raise PeerUnavailable(f"{who} answered HTTP {response.status_code} for {reference}")
                    content = await _read_within(response, limits.manifest_bytes, f"{who} answered {reference}")
                finally:
                    await response.aclose()
        except TimeoutError:
            raise PeerUnavailable(f"{who} did not answer {reference} within {wait:g} s") from None
        except httpx.HTTPError as exc:
            raise _unanswered(owner, exc) from None
        headers = response.headers
        try:
            return verify_manifest_answer(
                self._secret, signed, content, headers.get("docker-content-digest", ""),
                headers.get("content-type", ""), headers.get(VALIDATED_HEADER, ""),
                headers.get(STALE_REASON_HEADER, ""), headers.get(ANSWER_HEADER, ""), time.time(), expected)
        except ValidationError as exc:
            raise PeerAnswerRefused(f"{who} answered {reference} with something not taken: {exc}") from None


async def _read_within(response: httpx.Response, limit: int, what: str) -> bytes:
    """The body of a streamed ``response``, refused past ``limit`` bytes (decoded: compression cannot get round)."""
    announced = response.headers.get("content-length")
    if announced and announced.isdigit() and int(announced) > limit:
        raise PeerAnswerRefused(f"{what} larger than {format_size(limit)} (the {MANIFEST_MAX_SIZE_SETTING} setting)")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise PeerAnswerRefused(f"{what} larger than {format_size(limit)} (the {MANIFEST_MAX_SIZE_SETTING} "
                                    f"setting)")
        chunks.append(chunk)
    return b"".join(chunks)


def _unanswered(owner: Member, exc: httpx.HTTPError) -> PeerUnavailable:
    """Why ``owner`` gave no answer; a certificate it was refused for is said apart (the operator's fix is the
    fleet-ca file or the node's certificate, not the network), for a blob and a manifest alike."""
    failure = tls_error(exc)
    if failure is not None:
        return PeerUnavailable(f"fleet member {owner.node_id} at {owner.address}: its TLS certificate was not "
                               f"accepted ({failure.reason or type(failure).__name__}); its certificate must be "
                               f"issued for that address by the CA in the {FLEET_CA_SETTING} setting")
    return PeerUnavailable(f"fleet member {owner.node_id} at {owner.address} did not answer: "
                           f"{type(exc).__name__}")
