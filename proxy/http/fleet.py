"""This node in a fleet (docs/scale-out.md, "A fleet"): joining it at start, and answering its peers.

A node joins when its storage is the shared bucket and both ``fleet-address`` and ``fleet-secret`` are
set: it heartbeats in the bucket (regcache.proxy.storage.fleet) and asks the owner of each cold blob, and
of each tag to revalidate, for it (regcache.proxy.upstream.peer). Its registry app answers the same requests
from the others at ``/_regcache/peer/v1/<name>/blobs/<digest>?source=...`` and
``/_regcache/peer/v1/<name>/manifests/<tag or digest>?source=...&max-age=<seconds>``: signed with the fleet
secret (no client token, no Host check), served only when this node's own rule for ``<name>`` reads from
that same source, with this node's own proof (a stored, linked blob or manifest, its own single download, or
its own upstream's answer), and never forwarded again. A manifest answer is signed back (bound to the
request): unlike a blob's, its bytes name no digest the asking node knew in advance.

Peers use the node's TLS settings: a node serving https (``serve --tls-cert``) advertises an ``https://``
fleet-address and verifies the others' certificates against the ``fleet-ca`` file (else the system store); a
node serving plain http advertises ``http://``. A fleet-address whose scheme is not the one the node serves
would send the others to a listener that cannot answer them: the node then joins no fleet, and says why.
"""

from __future__ import annotations

import logging
import re
import secrets as random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import metadata
from urllib.parse import parse_qs, urlsplit

import anyio
from anyio.abc import TaskGroup
from starlette.requests import Request
from starlette.responses import Response

from regcache.proxy.core.errors import RegcacheError
from regcache.proxy.core.fleet import (
    ANSWER_HEADER,
    SIGNATURE_HEADER,
    STALE_REASON_HEADER,
    VALIDATED_HEADER,
    Member,
    answer_signature,
    verify_signature,
)
from regcache.proxy.core.references import is_digest, is_repository_name, is_tag
from regcache.proxy.core.settings import (
    CA_BUNDLE_MAX_SIZE_SETTING,
    FLEET_ADDRESS_SETTING,
    FLEET_CA_SETTING,
    FLEET_NODE_ID_SETTING,
    FLEET_SECRET_SETTING,
    UpstreamLimits,
)
from regcache.proxy.http.errors import RegistryError
from regcache.proxy.pull.cache import PullThroughCache
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import AsyncStateStore
from regcache.proxy.storage.backend import BlobBackend, BucketBackend
from regcache.proxy.storage.fleet import FleetMembership
from regcache.proxy.upstream.peer import MAX_AGE_LIMIT, PEER_PREFIX, PeerClient
from regcache.proxy.upstream.tls import CaBundle, peer_context, read_ca_bundle

log = logging.getLogger("regcache.fleet")

#: what follows PEER_PREFIX: a blob or a manifest of a repository
_PEER_PATH = re.compile(r"(?P<name>.+)/(?:blobs/(?P<digest>[^/]+)|manifests/(?P<reference>[^/]+))", re.DOTALL)


def _version() -> str:
    """This package's installed version, announced in heartbeats (`regcache fleet status` shows mixed ones)."""
    try:
        return metadata.version("regcache")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


@asynccontextmanager
async def joined_fleet(state: AsyncStateStore, backend: BlobBackend, secrets: SecretResolver, cache: PullThroughCache,
                       tasks: TaskGroup, *, serves_tls: bool = False) -> AsyncIterator[str | None]:
    """Join the fleet when configured (yields the fleet secret, for the peer endpoint), else yield None.

    ``serves_tls``: this node's listener serves https, so its fleet-address must be https:// and its peers are
    asked over https only, their certificates checked against the fleet-ca file (else the system store)."""
    address, secret_id, node_id, ca_path, ca_limit = await state.run(lambda s: (
        s.setting(FLEET_ADDRESS_SETTING), s.setting(FLEET_SECRET_SETTING), s.setting(FLEET_NODE_ID_SETTING),
        s.setting(FLEET_CA_SETTING), s.setting(CA_BUNDLE_MAX_SIZE_SETTING)))
    if not address or not secret_id or not isinstance(backend, BucketBackend):
        if address and not isinstance(backend, BucketBackend):
            log.warning("%s is set but the storage is not a bucket: this node is in no fleet", FLEET_ADDRESS_SETTING)
        yield None
        return
    scheme = urlsplit(address).scheme
    if scheme != ("https" if serves_tls else "http"):
        served = "https (--tls-cert)" if serves_tls else "plain http (no --tls-cert)"
        log.error("not joining the fleet: %s is %s but this node serves %s, so the other members could not reach "
                  "it; run `regcache settings set %s %s://...` (then restart)", FLEET_ADDRESS_SETTING, address,
                  served, FLEET_ADDRESS_SETTING, "https" if serves_tls else "http")
        yield None
        return
    try:
        secret = await anyio.to_thread.run_sync(secrets.get, secret_id)  # a keyring may block
    except RegcacheError as exc:
        log.error("not joining the fleet: its secret %s cannot be read: %s", secret_id, exc)
        yield None
        return
    bundle: CaBundle | None = None
    if ca_path:
        limit = UpstreamLimits.from_settings({CA_BUNDLE_MAX_SIZE_SETTING: ca_limit}).ca_bundle_bytes
        try:
            bundle = await anyio.to_thread.run_sync(read_ca_bundle, ca_path, limit)
        except RegcacheError as exc:  # never a fleet that trusts less than was configured
            log.error("not joining the fleet: %s: %s (fix the file, or `regcache settings set %s PEM_FILE`)",
                      FLEET_CA_SETTING, exc, FLEET_CA_SETTING)
            yield None
            return
    if not node_id:
        node_id = random.token_hex(8)
        await state.run(lambda s: s.set_setting(FLEET_NODE_ID_SETTING, node_id))
    membership = FleetMembership(backend.objects, Member(node_id, address, "", _version(), 0))
    peers = PeerClient(node_id, secret, verify=peer_context(bundle), https_only=serves_tls)
    cache.fleet, cache.peers = membership, peers
    if cache.metrics is not None:  # read at each scrape: what this node's owner choices are made from now
        cache.metrics.fleet_members.set_function(lambda: len(membership.members()))
    await cache.refresh()  # the fingerprint goes out with the first heartbeat
    await tasks.start(membership.run)
    log.info("joined the fleet on %s as %s (%s%s)", backend.objects.where, node_id, address,
             f", peers verified against {ca_path}" if bundle else "")
    try:
        yield secret
    finally:
        cache.fleet = cache.peers = None
        if cache.metrics is not None:
            cache.metrics.fleet_members.set_function(lambda: 0)
        await peers.aclose()


class PeerEndpoint:
    """Answers the fleet's peer requests with ``blob`` and ``manifest`` (the registry's handlers, never forwarding)."""

    def __init__(self, cache: PullThroughCache, secret: str,
                 blob: Callable[[Request, str, str], Awaitable[Response]],
                 manifest: Callable[[Request, str, str, float], Awaitable[Response]]) -> None:
        self.cache = cache
        self._secret = secret
        self._blob = blob
        self._manifest = manifest

    async def __call__(self, request: Request) -> Response:
        target = request.scope["raw_path"].decode("latin-1")
        query = request.scope["query_string"].decode("latin-1")
        if query:
            target += f"?{query}"
        signed = request.headers.get(SIGNATURE_HEADER, "")
        peer = verify_signature(self._secret, request.method, target, signed, time.time())
        if peer is None:
            raise RegistryError(401, "UNAUTHORIZED", "a peer request must be signed with this fleet's secret "
                                                     "(the fleet-secret setting, the same on every node)")
        found = _PEER_PATH.fullmatch(request.scope["path"][len(PEER_PREFIX):])
        params = parse_qs(query)
        source = params.get("source", [""])[0]
        name, digest, reference = (found["name"], found["digest"], found["reference"]) if found else ("", None, None)
        valid_reference = (is_digest(digest) if digest is not None
                           else reference is not None and (is_tag(reference) or is_digest(reference)))
        if not is_repository_name(name) or not source or not valid_reference:
            raise RegistryError(400, "NAME_INVALID", "a peer request names a repository, a digest or tag and a "
                                                     "source")
        max_age = params.get("max-age", ["0"])[0]
        if re.fullmatch(r"[0-9]{1,10}", max_age) is None or int(max_age) > MAX_AGE_LIMIT:
            raise RegistryError(400, "NAME_INVALID", "a peer manifest request's max-age is whole seconds")
        match = await self.cache.resolve(name)
        if self.cache.source(match) != source:  # another configuration: the asking node fetches on its own
            raise RegistryError(409, "DENIED", f"this node reads {name} from another source than the asking node")
        if digest is not None:
            log.debug("fleet member %s asked for %s of %s", peer, digest, name)
            if self.cache.metrics is not None:
                self.cache.metrics.peer_serve()
            return await self._blob(request, name, digest)
        assert reference is not None
        log.debug("fleet member %s asked for the manifest %s of %s", peer, reference, name)
        if self.cache.metrics is not None:
            self.cache.metrics.peer_manifest_serve()
        answer = await self._manifest(request, name, reference, float(max_age))
        headers = answer.headers
        headers[ANSWER_HEADER] = answer_signature(
            self._secret, signed, headers.get("docker-content-digest", ""), headers.get("content-type", ""),
            headers.get(VALIDATED_HEADER, ""), headers.get(STALE_REASON_HEADER, ""))
        return answer
