"""PullThroughCache: what the proxy serves for a client's name and reference (DESIGN section 2).

It matches the name to a cache rule (never an open proxy), answers from the local cache when it
can, revalidates tags with a HEAD upstream when they are older than the freshness window, fetches
what is missing, and serves cached content stale when the upstream is unreachable, failing or
rate-limiting. It answers in domain terms: a ServedManifest, a ServedBlob, or a PullError
(:mod:`regcache.proxy.core.errors`); only the HTTP layer gives them statuses and OCI error codes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import anyio

from regcache.proxy.core.catalogue import UpstreamCatalogue
from regcache.proxy.core.errors import (
    BlobUnknown,
    CacheUnavailable,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    NotFoundError,
    PullError,
    SecretError,
    StorageFull,
    UpstreamAuthFailed,
    UpstreamBadContent,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from regcache.proxy.core.fleet import STALE_DELETED, ManifestAnswer, Member, fingerprint, manifest_key
from regcache.proxy.core.models import (
    JOINED_DOWNLOAD,
    PEER_DOWNLOAD,
    CacheRule,
    CredentialHealth,
    CredentialSet,
    Result,
    RuleMatch,
    Upstream,
    source_of,
)
from regcache.proxy.core.oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    load_json,
    manifest_problem,
    media_type_of,
    shown,
)
from regcache.proxy.core.references import is_digest
from regcache.proxy.core.referrers import Referrer, fallback_tag, from_stored, parse_index, to_stored
from regcache.proxy.core.rules import RuleSet
from regcache.proxy.core.settings import SECRET_FILE_MAX_SIZE_SETTING, UPSTREAM_LIMIT_SETTINGS, UpstreamLimits
from regcache.proxy.pull.events import Accesses
from regcache.proxy.pull.known import KnownForVersion
from regcache.proxy.pull.metrics import ProxyMetrics
from regcache.proxy.pull.single_flight import SingleFlight
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import AsyncStateStore, StateStore
from regcache.proxy.storage.blobs import BlobStore
from regcache.proxy.storage.download import BlobStorageError, BlobStream, FetchedBlob, FilePiece, StoredBlob
from regcache.proxy.storage.fleet import FleetMembership
from regcache.proxy.upstream.client import (
    Credentials,
    UpstreamAuthError,
    UpstreamClient,
    UpstreamError,
    UpstreamManifest,
    UpstreamNotFound,
    UpstreamUnreachable,
)
from regcache.proxy.upstream.peer import PeerAnswerRefused, PeerClient, PeerUnavailable

log = logging.getLogger("regcache.cache")

#: how long resolved secrets are reused before the keyring is asked again
CREDENTIALS_TTL = 60.0
#: a login result the same as the recorded one is written again (a new time) at most this often
HEALTH_REFRESH = 300.0
#: containerd's ?ns= for Docker Hub may name its API host rather than its login server
NS_ALIASES = {"registry-1.docker.io": "docker.io", "index.docker.io": "docker.io"}
#: the detail of a manifest miss answered by the fleet member that owns it (docs/scale-out.md)
PEER_MANIFEST = "fetched by the fleet member that owns it"
#: links kept per configuration version (a few hundred bytes each)
KNOWN_LINKS = 16_384
#: manifests served as hits kept per configuration version, and their bytes together
KNOWN_MANIFESTS = 4_096
KNOWN_MANIFEST_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LoginCheck:
    """A re-check of a credential set: the set (its health as recorded now), whether the upstream answered
    about the login (``verified``; only then was the health recorded), and what happened, in one line."""

    credential_set: CredentialSet
    verified: bool
    message: str


@dataclass(frozen=True, slots=True)
class ServedManifest:
    """A manifest to answer with: its bytes, and how it was served."""

    digest: str
    media_type: str
    content: bytes
    result: Result
    detail: str | None = None
    #: for a tag: when its source last confirmed it (a fleet member asking this node stores that time)
    validated_at: datetime | None = None
    #: stale because the upstream no longer has the tag (else, when stale: the upstream failed)
    deleted: bool = False


@dataclass(slots=True)
class ServedBlob:
    """A blob to answer with: verified bytes on disk or in the bucket (hit), or its single-flight download (miss).

    ``size`` is None when the upstream sent no Content-Length. Read it with :meth:`chunks`; a blob whose
    bytes are not read (a refused range) must be closed, so the download is not kept waiting on it.
    """

    digest: str
    size: int | None
    result: Result
    detail: str | None
    _store: BlobStore
    _source: StoredBlob | BlobStream

    @property
    def downloading(self) -> bool:
        return isinstance(self._source, BlobStream)

    @property
    def local_file(self) -> Path | None:
        """The verified file on this machine's disk (a filesystem hit), which can be sent as it is."""
        return self._source.path if isinstance(self._source, StoredBlob) else None

    def chunks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive; None: to the end)."""
        if isinstance(self._source, StoredBlob):
            return self._store.open(self._source, start, self._source.size if end is None else end)
        return self._source.chunks(start, end)

    def body(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes | FilePiece]:
        """As :meth:`chunks`, for a server: a download's written bytes come as :class:`FilePiece` ranges."""
        if isinstance(self._source, StoredBlob):
            return self.chunks(start, end)
        return self._source.body(start, end)

    async def wait_verified(self) -> None:
        """For a ranged read of a blob still downloading: return once all of it verified, so that only
        verified bytes are served with a success status; raise the download's failure instead."""
        if not isinstance(self._source, BlobStream):
            return
        try:
            await self._source.wait_verified()
        except BlobStorageError as exc:
            raise _storage_failure(exc) from None
        except Exception as exc:
            raise UpstreamBadContent(f"the download of {self.digest} failed: {exc}") from None

    async def wait_kept(self) -> None:
        """For a download (its bytes read): return once they are kept, so that a job reports only what the cache
        holds; raise what failed to keep them instead."""
        if not isinstance(self._source, BlobStream):
            return
        try:
            await self._source.wait_kept()
        except BlobStorageError as exc:
            raise _storage_failure(exc) from None

    def close(self) -> None:
        if isinstance(self._source, BlobStream):
            self._source.close()


def _storage_failure(exc: BlobStorageError) -> CacheUnavailable:
    """What a client is told when the cache's own storage failed (not the upstream)."""
    return (StorageFull if exc.disk_full else CacheUnavailable)(str(exc))


def compute_digest(content: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, content).hexdigest()}"


def pull_error(exc: UpstreamError, unknown: PullError) -> PullError:
    """What a client is told for an upstream failure (``unknown`` for a 404 upstream)."""
    if isinstance(exc, UpstreamNotFound):
        return unknown
    if isinstance(exc, UpstreamAuthError):
        return UpstreamAuthFailed(str(exc))
    if isinstance(exc, UpstreamUnreachable):
        kind = UpstreamRateLimited if exc.status == 429 else UpstreamUnavailable
        return kind(f"{exc}; nothing is cached to serve instead")
    return UpstreamBadContent(str(exc))


def checked_manifest(login_server: str, got: UpstreamManifest, what: str, digest: str | None = None) -> bytes:
    """The bytes of an upstream's manifest answer once they may be stored: an OCI or Docker manifest or index
    (its type from its content) with well-formed descriptors, matching its Docker-Content-Digest (sha256 or
    sha512, when sent) and ``digest`` (when asked by digest). Otherwise UpstreamBadContent, nothing stored."""
    content = got.content or b""
    if got.digest:  # an empty header is no claim
        if not is_digest(got.digest):
            raise UpstreamBadContent(f"upstream {login_server} sent {what} with the Docker-Content-Digest "
                                     f"{shown(got.digest)}, not a sha256 or sha512 digest; nothing was stored")
        if compute_digest(content, got.digest.partition(":")[0]) != got.digest:
            raise ManifestInvalid(f"upstream {login_server} sent a manifest whose bytes do not match its "
                                  f"Docker-Content-Digest {got.digest}")
    if digest is not None and compute_digest(content, digest.partition(":")[0]) != digest:
        raise ManifestInvalid(f"upstream {login_server} sent a manifest that does not match {digest}")
    problem = manifest_problem(content, got.media_type)
    if problem is not None:
        raise UpstreamBadContent(f"upstream {login_server} sent {what} that regcache does not store or serve: "
                                 f"{problem}; nothing was stored")
    return content


def servable(served: ServedManifest) -> ServedManifest:
    """``served`` if its media type may be a response's Content-Type: a manifest kept before these checks
    existed may carry another one, and is not served."""
    if served.media_type not in MANIFEST_TYPES:
        raise UpstreamBadContent(f"manifest {served.digest} is stored as {shown(served.media_type)}, not an OCI or "
                                 f"Docker image manifest or index; it is not served")
    return served


def _accepts(accept: list[str], media_type: str) -> bool:
    return not accept or media_type in accept or "*/*" in accept


def _store_manifest(s: StateStore, repository: str, source: str, registry: str, digest: str, media_type: str,
                    content: bytes, tag: str | None, when: datetime | None = None) -> None:
    """Keep verified manifest bytes; ``source`` (from ``registry``) has them for ``repository``, under ``tag``
    (confirmed ``when``: now by default)."""
    s.put_manifest(digest, media_type, content)
    s.link(repository, source, digest, "manifest", media_type)
    s.record_served(digest, registry)
    if tag is not None:
        s.set_tag(repository, source, tag, digest, when=when)


def _cached_manifest(s: StateStore, repository: str, source: str, registry: str,
                     digest: str) -> tuple[tuple[str, bytes] | None, tuple[str, str | None] | None, bool]:
    """What is known of ``digest``: its bytes (media type, content), ``source``'s link to it, and whether
    ``registry`` (the source's upstream) ever served it verified."""
    return s.manifest(digest), s.linked(repository, source, digest), s.served(digest, registry)


class PullThroughCache:
    """Serves manifests, blobs and tag lists for rule-matched names, from cache or upstream."""

    def __init__(self, state: AsyncStateStore, upstream: UpstreamClient, blobs: BlobStore,
                 secrets: SecretResolver | None = None, freshness: float = 0.0,
                 metrics: ProxyMetrics | None = None) -> None:
        self.state = state
        self.metrics = metrics
        self.upstream = upstream
        self.blobs = blobs
        self.secrets = secrets or SecretResolver()
        self.freshness = freshness
        #: manifests, tags and links shared with other nodes through the bucket (s3 storage only)
        self.shared = blobs.backend.shared
        self._version: int | None = None
        self._rules = RuleSet()
        self._catalogue = UpstreamCatalogue()
        self._credential_sets: dict[str, CredentialSet] = {}
        self._credentials: dict[str, tuple[float, Credentials]] = {}
        #: concurrent requests for one manifest share one upstream fetch (as blobs share one download)
        self._flights: SingleFlight[ServedManifest] = SingleFlight()
        #: the fleet this node is in (s3 storage with fleet-address set), and how it asks the other members
        self.fleet: FleetMembership | None = None
        self.peers: PeerClient | None = None
        #: where blob accesses and repository pulls are noted for the event writer (None: written at once)
        self.accesses: Accesses | None = None
        #: (repository, source, digest) a hit was served for, per configuration version (regcache.proxy.pull.known)
        self._known_links: KnownForVersion[tuple[str, str, str], bool] = KnownForVersion(KNOWN_LINKS)
        self._known_manifests: KnownForVersion[tuple[str, str, str], ServedManifest] = KnownForVersion(
            KNOWN_MANIFESTS, KNOWN_MANIFEST_BYTES)
        #: link checks in flight: the first burst of clients for one blob asks the state once, not once each (the
        #: state answers one call at a time: 64 connections opened at once waited up to 0.9 s behind each other)
        self._link_checks: SingleFlight[bool] = SingleFlight()

    # -- configuration -------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload rules, upstreams, credential sets and upstream limits when the configuration version moved."""
        version = await self.state.config_version()
        if version == self._version:
            return
        rules, custom, overrides, sets, limits, secret_file_max = await self.state.run(
            lambda s: (s.cache_rules(), s.custom_upstreams(), s.upstream_overrides(), s.credential_sets(),
                       UpstreamLimits.from_settings({key: s.setting(key) for key in UPSTREAM_LIMIT_SETTINGS}),
                       s.setting(SECRET_FILE_MAX_SIZE_SETTING)))
        self.upstream.limits = limits
        if secret_file_max:
            self.secrets.file_max_size = int(float(secret_file_max))
        self._rules = RuleSet(rules)
        self._catalogue = UpstreamCatalogue(custom, overrides)
        await self.upstream.reload_ca_bundles(self._catalogue)  # a changed or vanished file is seen at a reload
        self._credential_sets = {cs.name: cs for cs in sets}
        self._credentials.clear()
        self._known_links.clear()  # of an older version: no use any more
        self._known_manifests.clear()
        self._version = version
        if self.fleet is not None:  # only members configured alike fetch for each other
            self.fleet.set_fingerprint(fingerprint(rules, list(self._catalogue), sets))

    async def resolve(self, name: str, ns: str | None = None) -> RuleMatch:
        """The rule serving ``name`` (or, in mirror mode, ``ns/name``); NAME_UNKNOWN when none does."""
        await self.refresh()
        if ns:
            registry = NS_ALIASES.get(ns.lower(), ns.lower())
            match = self._rules.match_source(registry, name)
            if match is None:
                raise NameUnknown(
                    f"no cache rule has a source covering {registry}/{name}; create one, e.g. "
                    f"`regcache cache create -n RULE -s {registry}/{name} -t {name}`")
            return match
        match = self._rules.match(name)
        if match is None:
            raise NameUnknown(
                f"no cache rule covers repository {name!r}; create one, e.g. "
                f"`regcache cache create -n RULE -s LOGIN_SERVER/PATH -t {name}`")
        return match

    def upstream_of(self, match: RuleMatch) -> Upstream:
        try:
            return self._catalogue.get(match.upstream.login_server)
        except Exception:
            raise CacheUnavailable(f"rule {match.rule.name!r} names upstream {match.upstream.login_server}, "
                                   f"which is no longer configured") from None

    async def credentials(self, rule: CacheRule) -> Credentials | None:
        name = rule.credential_set
        if name is None:
            return None
        cs = self._credential_sets.get(name)
        if cs is None:
            raise CacheUnavailable(f"credential set {name!r} of rule {rule.name!r} is gone")
        return await self._login_of(cs)

    async def _login_of(self, cs: CredentialSet) -> Credentials:
        """The username and password of ``cs``, read by this process (reused for CREDENTIALS_TTL).

        A secret this process cannot read fails the pull with the reason, but is no login result: the set's
        health (what every process shows) stays what the upstream last said.
        """
        name = cs.name
        cached = self._credentials.get(name)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            username, password = await anyio.to_thread.run_sync(
                lambda: (self.secrets.get(cs.username_secret_id), self.secrets.get(cs.password_secret_id)))
        except SecretError as exc:
            log.warning("credential set %s cannot be used by this process: %s", name, exc)
            raise CacheUnavailable(f"credential set {name!r} cannot be used: {exc}") from None
        creds = Credentials(name, username, password)
        self._credentials[name] = (time.monotonic() + CREDENTIALS_TTL, creds)
        return creds

    def source(self, match: RuleMatch) -> str:
        """The source ``match``'s rule reads from now: its upstream repository and its access."""
        name = match.rule.credential_set
        if name is None:
            return source_of(match.upstream, None)
        cs = self._credential_sets.get(name)
        if cs is None:
            raise CacheUnavailable(f"credential set {name!r} of rule {match.rule.name!r} is gone")
        return source_of(match.upstream, cs)

    async def _record_health(self, name: str, health: CredentialHealth) -> None:
        """Record a real upstream login result (the only writer of credential health)."""
        cs = self._credential_sets.get(name)
        if (cs is not None and (cs.health.status, cs.health.error_code) == (health.status, health.error_code)
                and cs.health.checked_at is not None and health.checked_at is not None
                and (health.checked_at - cs.health.checked_at).total_seconds() < HEALTH_REFRESH):
            return  # the same answer again, recorded moments ago: no write per pull
        try:
            updated = await self.state.run(lambda s: s.record_credential_health(name, health))
        except Exception as exc:
            log.warning("could not record the health of credential set %s: %s", name, exc)
            return
        if updated is not None:  # None: the set was deleted meanwhile
            self._credential_sets[name] = updated

    async def upstream_call(self, match: RuleMatch, creds: Credentials | None, call):
        """Run ``call(upstream)``, keeping the credential set's health in step with the outcome."""
        upstream = self.upstream_of(match)
        try:
            result = await call(upstream)
        except UpstreamError as exc:
            await self._save_rate_limits()
            if self.metrics is not None and not isinstance(exc, UpstreamNotFound):
                self.metrics.upstream_error(match.rule.name, upstream.login_server, type(exc).__name__)
            if isinstance(exc, UpstreamAuthError) and creds is not None:
                self._credentials.pop(creds.identity, None)
                await self._record_health(creds.identity, CredentialHealth.unhealthy("UpstreamAuthFailed", str(exc)))
            raise
        await self._save_rate_limits()
        if creds is not None:  # the upstream accepted the login: clears UpstreamAuthFailed
            await self._record_health(creds.identity, CredentialHealth.healthy())
        return result

    async def check_credential_set(self, name: str) -> LoginCheck:
        """Log in to the upstream with credential set ``name`` now, as ``docker login`` does, and record the
        result as its health when the upstream answered about the login (accepted or refused).

        An unreachable upstream, or secrets this process cannot read, records nothing: the health stays the
        last real answer, and the returned check says why nothing was learned.
        """
        await self.refresh()
        cs = self._credential_sets.get(name)
        if cs is None:
            raise NotFoundError(f"credential set {name!r} does not exist (see `regcache credential-set list`)",
                                field="name")
        try:
            upstream = self._catalogue.get(cs.login_server)
        except Exception:
            return LoginCheck(cs, False, f"its upstream {cs.login_server} is no longer configured")
        try:
            creds = await self._login_of(cs)
        except CacheUnavailable as exc:
            return LoginCheck(cs, False, str(exc))
        try:
            asked = await self.upstream.check_login(upstream, creds)
        except UpstreamAuthError as exc:
            self._credentials.pop(name, None)
            await self._record_health(name, CredentialHealth.unhealthy("UpstreamAuthFailed", str(exc)))
            return LoginCheck(self._credential_sets.get(name, cs), True, str(exc))
        except UpstreamError as exc:
            return LoginCheck(cs, False, f"the login could not be checked: {exc}")
        finally:
            await self._save_rate_limits()
        if not asked:
            return LoginCheck(cs, False, f"{cs.login_server} answers without asking for a login; the credentials "
                                         f"are checked on the next pull that needs them")
        await self._record_health(name, CredentialHealth.healthy())
        return LoginCheck(self._credential_sets.get(name, cs), True, f"{cs.login_server} accepted the login")

    async def _save_rate_limits(self) -> None:
        changes = self.upstream.take_rate_limit_changes()
        if changes:
            def record(s: StateStore) -> None:
                for (server, identity), (budget, new_429s) in changes.items():
                    s.record_rate_limit(server, identity, budget.limit, budget.remaining, new_429s)

            await self.state.run(record)

    # -- manifests -----------------------------------------------------------------------------

    async def manifest(self, match: RuleMatch, reference: str, accept: list[str], count_pull: bool = True,
                       forward: bool = True, max_age: float | None = None) -> ServedManifest:
        """The manifest for a tag or digest, negotiated against the client's ``Accept`` list.

        In a fleet, a tag to (re)validate and a digest not in the bucket are asked of the member that owns them
        (the same for every node), so concurrent pulls on N nodes cost the upstream one request; a member that
        cannot be asked is passed over and this node asks its upstream. ``forward=False``: a request from a
        member, answered here and never forwarded again, with the tag confirmed at most ``max_age`` seconds ago
        (the asking node's freshness window) when that is shorter than this rule's.
        """
        if ":" in reference:
            served = await self._manifest_by_digest(match, reference, forward)
        else:
            source = self.source(match)
            owner = self._owner(manifest_key(source, reference), forward)
            freshness = match.rule.freshness if match.rule.freshness is not None else self.freshness
            if max_age is not None:
                freshness = min(freshness, max_age)
            # one flight per way of answering: a member's request never joins a flight that asks another member
            served = await self._flights.run(
                ("tag", source, match.repository, reference, owner.node_id if owner else None, freshness),
                lambda: self._manifest_by_tag(match, reference, owner, freshness))
            if not _accepts(accept, served.media_type):
                served = await self._negotiate(match, served, accept)
        servable(served)
        if count_pull:
            if self.accesses is not None:
                self.accesses.pull(match.repository, match.rule.name, str(match.upstream))
            else:
                await self.state.run(lambda s: s.record_repository(match.repository, match.rule.name,
                                                                     str(match.upstream)))
        return served

    async def _negotiate(self, match: RuleMatch, served: ServedManifest, accept: list[str]) -> ServedManifest:
        """A client that cannot read an index gets its linux/amd64 image, as the distribution registry does."""
        if served.media_type in INDEX_TYPES:
            try:
                doc = load_json(served.content)
            except ValueError:  # stored before manifests were checked
                doc = None
            entries = doc.get("manifests") if isinstance(doc, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                platform = entry.get("platform") if isinstance(entry, dict) else None
                if not isinstance(platform, dict) or not is_digest(str(entry.get("digest"))):
                    continue  # a manifest stored before descriptors were checked
                if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
                    child = await self._manifest_by_digest(match, entry["digest"])
                    if _accepts(accept, child.media_type):
                        return child
        raise ManifestUnknown(
            f"the manifest is {served.media_type}, which the client does not accept ({', '.join(accept)})")

    async def _manifest_by_digest(self, match: RuleMatch, digest: str, forward: bool = True) -> ServedManifest:
        source = self.source(match)
        version = await self.state.config_version()  # before the state is read: what it reads belongs to it
        key = (match.repository, source, digest)
        known = self._known_manifests.get(key, version)
        if known is not None:
            return known
        owner = self._owner(manifest_key(source, digest), forward)
        served = await self._flights.run(("digest", source, match.repository, digest, owner.node_id if owner else None),
                                         lambda: self._fetch_manifest_by_digest(match, digest, owner))
        if served.result is Result.HIT and served.detail is None:
            self._known_manifests.put(key, served, version, len(served.content))
        return served

    async def _fetch_manifest_by_digest(self, match: RuleMatch, digest: str, owner: Member | None) -> ServedManifest:
        repo, source, registry = match.repository, self.source(match), match.upstream.login_server
        cached, link, served = await self.state.run(_cached_manifest, repo, source, registry, digest)
        if cached is not None and link is not None:
            return ServedManifest(digest, link[1] or media_type_of(cached[1], cached[0]), cached[1], Result.HIT)
        if self.shared is not None:
            shared = await self._shared_manifest(match, source, digest, cached)
            if shared is not None:
                return shared
        answer = await self._ask_owner(owner, match, digest, 0.0, digest) if owner is not None else None
        if answer is not None:  # the owner's proof: its own link, or its upstream's answer, for this source
            await self.state.run(_store_manifest, repo, source, registry, digest, answer.media_type, answer.content,
                                 None)
            return ServedManifest(digest, answer.media_type, answer.content, Result.MISS, PEER_MANIFEST)
        creds = await self.credentials(match.rule)
        path = match.upstream.path
        if cached is not None and served:
            # Known bytes that this source's registry itself served before (verified): its HEAD is proof
            # enough that this repository has them too (a base manifest shared by many repositories).
            try:
                head = await self.upstream_call(
                    match, creds, lambda up: self.upstream.manifest(up, path, digest, creds, method="HEAD"))
            except UpstreamError as exc:
                raise pull_error(exc, ManifestUnknown(f"manifest {digest} is not in {repo}")) from None
            media_type = media_type_of(cached[1], head.media_type)
            servable(ServedManifest(digest, media_type, cached[1], Result.HIT))  # before it is linked
            await self.state.run(lambda s: s.link(repo, source, digest, "manifest", media_type))
            return ServedManifest(digest, media_type, cached[1], Result.HIT)
        # Otherwise only the bytes themselves, from this source, verified, prove it: an upstream can
        # unlock only what it served.
        try:
            got = await self.upstream_call(match, creds, lambda up: self.upstream.manifest(up, path, digest, creds))
        except UpstreamError as exc:
            raise pull_error(exc, ManifestUnknown(f"manifest {digest} is not in {repo} "
                                                  f"(upstream {match.upstream})")) from None
        content = checked_manifest(match.upstream.login_server, got, f"the manifest {digest}", digest)
        await self.state.run(_store_manifest, repo, source, registry, digest, got.media_type, content, None)
        await self._share_manifest(source, digest, got.media_type, content)
        return ServedManifest(digest, got.media_type, content, Result.MISS)

    async def _shared_manifest(self, match: RuleMatch, source: str, digest: str,
                               cached: tuple[str, bytes] | None) -> ServedManifest | None:
        """The manifest from the bucket when another node verified that ``source`` has it."""
        if self.shared is None or not await self.shared.linked(source, digest):
            return None
        found = cached or await self.shared.manifest(digest)
        if found is None:
            return None
        media_type, content = media_type_of(found[1], found[0]), found[1]
        problem = manifest_problem(content, media_type)
        if problem is not None:  # the bucket is shared, not trusted to hold only what this version accepts
            log.warning("manifest %s in the shared store is not used: %s", digest, problem)
            return None

        def keep(s: StateStore) -> None:
            s.put_manifest(digest, media_type, content)
            s.link(match.repository, source, digest, "manifest", media_type)

        await self.state.run(keep)
        return ServedManifest(digest, media_type, content, Result.HIT, "from the shared store")

    async def _share_manifest(self, source: str, digest: str, media_type: str, content: bytes,
                              tag: str | None = None) -> None:
        """Tell the other nodes: these manifest bytes, which ``source`` has (under ``tag``)."""
        if self.shared is None:
            return
        await self.shared.put_manifest(digest, media_type, content)
        await self.shared.link(source, digest)
        if tag is not None:
            await self.shared.set_tag(source, tag, digest)

    async def _manifest_by_tag(self, match: RuleMatch, tag: str, owner: Member | None,
                               freshness: float) -> ServedManifest:
        repo, source, registry = match.repository, self.source(match), match.upstream.login_server
        path = match.upstream.path

        def cached_manifest(s: StateStore) -> tuple[tuple[str, datetime] | None, tuple[str, bytes] | None]:
            found_tag = s.tag(repo, source, tag)
            if found_tag is None:
                return None, None
            found, link, _ = _cached_manifest(s, repo, source, registry, found_tag[0])
            if found is None:
                return found_tag, None
            return found_tag, ((link[1] if link else None) or media_type_of(found[1], found[0]), found[1])

        cached_tag, found = await self.state.run(cached_manifest)
        if cached_tag is None and self.shared is not None:
            shared_tag = await self.shared.tag(source, tag)
            if shared_tag is not None:
                shared = await self._shared_manifest(match, source, shared_tag.digest, None)
                if shared is not None:  # as if this node had seen the tag when the other one did
                    cached_tag, found = (shared.digest, shared_tag.seen_at), (shared.media_type, shared.content)
                    # kept here too, so the next pulls within the freshness window stay local
                    await self.state.run(lambda s: s.set_tag(repo, source, tag, shared.digest,
                                                             when=shared_tag.seen_at))
        cached: ServedManifest | None = None
        if cached_tag is not None:
            digest, validated_at = cached_tag
            if found is not None:
                cached = ServedManifest(digest, found[0], found[1], Result.HIT, validated_at=validated_at)
                age = (datetime.now(timezone.utc) - validated_at).total_seconds()
                if age < freshness:
                    return cached
        answer = await self._ask_owner(owner, match, tag, freshness) if owner is not None else None
        if answer is not None:
            return await self._owners_answer(match, tag, cached, answer)
        try:
            creds = await self.credentials(match.rule)
            if cached is not None:
                head = await self.upstream_call(
                    match, creds, lambda up: self.upstream.manifest(up, path, tag, creds, method="HEAD"))
                if head.digest == cached.digest:
                    now = datetime.now(timezone.utc)
                    await self.state.run(lambda s: s.set_tag(repo, source, tag, cached.digest, when=now))
                    return replace(cached, validated_at=now)
            got = await self.upstream_call(match, creds, lambda up: self.upstream.manifest(up, path, tag, creds))
        except UpstreamError as exc:
            return self._upstream_failed(match, tag, cached, exc)
        content = checked_manifest(match.upstream.login_server, got, f"the manifest {repo}:{tag}")
        digest = compute_digest(content)
        now = datetime.now(timezone.utc)
        await self.state.run(_store_manifest, repo, source, registry, digest, got.media_type, content, tag, now)
        await self._share_manifest(source, digest, got.media_type, content, tag)
        return ServedManifest(digest, got.media_type, content, Result.MISS, validated_at=now)

    def _upstream_failed(self, match: RuleMatch, tag: str, cached: ServedManifest | None,
                         exc: UpstreamError) -> ServedManifest:
        """The cached tag served stale when the rule allows it for this failure; else the client's error."""
        if isinstance(exc, UpstreamUnreachable) and cached is not None and match.rule.serve_stale_on_error:
            log.warning("serving %s:%s stale: %s", match.repository, tag, exc)
            return replace(cached, result=Result.STALE, detail=str(exc))
        if isinstance(exc, UpstreamNotFound) and cached is not None and match.rule.serve_stale_if_deleted:
            log.warning("serving %s:%s stale: %s", match.repository, tag, exc)
            return replace(cached, result=Result.STALE, detail=f"{exc} (the rule serves deleted tags stale)",
                           deleted=True)
        raise pull_error(exc, ManifestUnknown(f"upstream {match.upstream} has no tag {tag!r}"
                                              if isinstance(exc, UpstreamNotFound) else "")) from None

    # -- the fleet -----------------------------------------------------------------------------

    def _owner(self, key: str, forward: bool) -> Member | None:
        """The fleet member that fetches ``key`` for the fleet; None when this node fetches it itself (no fleet,
        this node owns it, or ``forward`` is False: a member's request, never forwarded again)."""
        fleet = self.fleet
        if not forward or fleet is None or self.peers is None:
            return None
        owner = fleet.owner(key)
        return None if owner.node_id == fleet.me.node_id else owner

    async def _ask_owner(self, owner: Member, match: RuleMatch, reference: str, max_age: float,
                         expected: str | None = None) -> ManifestAnswer | None:
        """``owner``'s checked answer for a manifest of this source; None (logged, counted, the owner passed
        over for a while) when it cannot be asked or its answer is not taken: this node then asks its upstream."""
        fleet, peers = self.fleet, self.peers
        assert fleet is not None and peers is not None, "an owner is chosen only in a fleet"
        try:
            answer = await peers.manifest(owner, match.repository, reference, self.source(match), max_age,
                                          self.upstream.limits, expected)
        except PeerUnavailable as exc:
            fleet.failed(owner.node_id)
            if self.metrics is not None:
                self.metrics.own_manifest("peer answer refused" if isinstance(exc, PeerAnswerRefused)
                                          else "peer unavailable")
            log.warning("%s; asking the upstream for %s from this node", exc, reference)
            return None
        if self.metrics is not None:
            self.metrics.peer_manifest()
        return answer

    async def _owners_answer(self, match: RuleMatch, tag: str, cached: ServedManifest | None,
                             answer: ManifestAnswer) -> ServedManifest:
        """A tag as its owner answered it, stored as an upstream's answer is, confirmed when the owner's upstream
        confirmed it. An owner whose upstream failed serves it stale: this node's own rule and cache then decide,
        without asking the upstream again (it just failed, perhaps rate-limiting, for the whole fleet)."""
        repo, source, registry = match.repository, self.source(match), match.upstream.login_server
        if answer.stale == STALE_DELETED:
            return self._upstream_failed(match, tag, cached, UpstreamNotFound(
                registry, f"has no tag {tag!r} any more (told the fleet member that owns it)"))
        if answer.stale is not None:
            return self._upstream_failed(match, tag, cached, UpstreamUnreachable(
                registry, f"failed the fleet member that owns {repo}:{tag}, which serves it stale"))
        now = datetime.now(timezone.utc)
        when = now if answer.validated_at is None else min(
            datetime.fromtimestamp(answer.validated_at, timezone.utc), now)
        if cached is not None and answer.digest == cached.digest:
            await self.state.run(lambda s: s.set_tag(repo, source, tag, cached.digest, when=when))
            return replace(cached, validated_at=when)
        await self.state.run(_store_manifest, repo, source, registry, answer.digest, answer.media_type,
                             answer.content, tag, when)
        return ServedManifest(answer.digest, answer.media_type, answer.content, Result.MISS, PEER_MANIFEST,
                              validated_at=when)

    # -- blobs ---------------------------------------------------------------------------------

    async def blob(self, match: RuleMatch, digest: str, forward: bool = True) -> ServedBlob:
        """A stored blob (hit) or a stream of the single-flight download of it for this source (miss).

        In a fleet, a miss goes to the member that owns the digest, which streams its single download
        (``forward=False``: a request from a peer, answered here and never forwarded again); a member that
        cannot be asked is passed over, and this node downloads on its own.
        """
        repo, source, registry = match.repository, self.source(match), match.upstream.login_server
        path = match.upstream.path
        stored = await self.blobs.lookup(digest, source)
        if stored is not None:
            if await self._linked(repo, source, digest) or await self._proved(match, source, digest):
                if self.accesses is not None:
                    self.accesses.blob(digest)
                else:
                    await self.state.run(lambda s: s.touch_blob(digest))
                return ServedBlob(digest, stored.size, Result.HIT, None, self.blobs, stored)
            # Stored for another source, and this one has not proved it has the blob: its own upstream
            # must send the bytes, verified, before they are served through this rule.
        creds = await self.credentials(match.rule)
        fleet, peers = self.fleet, self.peers
        owner = self._owner(digest, forward)  # None: this node downloads it (for the fleet, if it owns it)
        passed_over = owner is None and forward and fleet is not None and fleet.passed_over(digest)
        peer_fed = False

        @asynccontextmanager
        async def fetch() -> AsyncIterator[FetchedBlob]:
            nonlocal peer_fed
            async with AsyncExitStack() as stack:
                got: FetchedBlob | None = None
                if owner is not None and fleet is not None and peers is not None:
                    try:
                        got = await stack.enter_async_context(
                            peers.blob(owner, repo, digest, source, self.upstream.limits))
                        peer_fed = True
                        if self.metrics is not None:
                            self.metrics.peer_fetch()
                    except PeerUnavailable as exc:  # the next-ranked member is asked next time; now: our own
                        fleet.failed(owner.node_id)
                        if self.metrics is not None:
                            self.metrics.own_download("peer unavailable")
                        log.warning("%s; downloading %s on this node", exc, digest)
                if passed_over and self.metrics is not None:  # its owner failed lately: downloaded here instead
                    self.metrics.own_download("owner passed over")
                # entering the upstream's response goes through the same bookkeeping as every other call
                if got is None:
                    got = await self.upstream_call(
                        match, creds,
                        lambda up: stack.enter_async_context(self.upstream.blob(up, path, digest, creds)))
                yield got

        def link(s: StateStore) -> None:
            s.link(repo, source, digest, "blob")
            s.record_served(digest, registry)

        async def verified() -> None:  # only verified bytes link a digest to a source
            await self.state.run(link)
            if self.shared is not None:
                await self.shared.link(source, digest)

        try:
            # a blob the owner streams is stored by the owner: this node only verifies and serves it
            stream = self.blobs.stream(digest, fetch, source, verified, keep=lambda: not peer_fed)
        except BlobStorageError as exc:  # not even the temporary file could be made: our disk, not the upstream
            raise _storage_failure(exc) from None
        try:
            size = await stream.size()
        except UpstreamError as exc:
            raise pull_error(exc, BlobUnknown(f"upstream {match.upstream} has no blob {digest}")) from None
        except BlobStorageError as exc:  # our disk, not the upstream: say so
            raise _storage_failure(exc) from None
        except Exception as exc:
            raise UpstreamBadContent(f"fetching blob {digest} from upstream {match.upstream.login_server} "
                                     f"failed: {exc}") from None
        if stream.joined and stream.download.verified:  # whole and verified here, being stored: no wait, no upstream
            return ServedBlob(digest, size, Result.HIT, None, self.blobs, stream)
        detail = JOINED_DOWNLOAD if stream.joined else PEER_DOWNLOAD if peer_fed else None
        return ServedBlob(digest, size, Result.MISS, detail, self.blobs, stream)

    async def _linked(self, repository: str, source: str, digest: str) -> bool:
        """Whether ``source`` is linked to ``digest`` for ``repository``: kept per configuration version once true."""
        version = await self.state.config_version()  # before the state is read: what it reads belongs to it
        key = (repository, source, digest)
        if self._known_links.get(key, version):
            return True
        if not await self._link_checks.run((key, version),
                                           lambda: self.state.run(lambda s: s.is_linked(repository, source, digest))):
            return False
        self._known_links.put(key, True, version)
        return True

    async def _proved(self, match: RuleMatch, source: str, digest: str) -> bool:
        """Link a stored blob to ``source`` if another node showed that source has it, or if its registry,
        which served these bytes verified before, answers HEAD 200; False when only a download can tell."""
        repo, registry = match.repository, match.upstream.login_server
        if self.shared is None or not await self.shared.linked(source, digest):
            if not await self.state.run(lambda s: s.served(digest, registry)):
                return False
            creds = await self.credentials(match.rule)
            try:
                await self.upstream_call(
                    match, creds, lambda up: self.upstream.blob_size(up, match.upstream.path, digest, creds))
            except UpstreamError as exc:
                raise pull_error(exc, BlobUnknown(f"blob {digest} is not in {repo}")) from None
        await self.state.run(lambda s: s.link(repo, source, digest, "blob"))
        return True

    async def blob_size(self, match: RuleMatch, digest: str) -> tuple[int, Result]:
        """For HEAD: the blob's size from the store, else from the upstream (nothing downloaded)."""
        source = self.source(match)
        stored = await self.blobs.lookup(digest, source)
        if stored is not None and (await self._linked(match.repository, source, digest)
                                   or await self._proved(match, source, digest)):
            return stored.size, Result.HIT
        if stored is None and (size := self.blobs.verified_size(digest, source)) is not None:
            return size, Result.HIT  # this source's bytes, verified, being stored: as good as stored
        # not stored, or not shown to be this source's: the upstream's own answer, nothing linked
        creds = await self.credentials(match.rule)
        try:
            size = await self.upstream_call(
                match, creds, lambda up: self.upstream.blob_size(up, match.upstream.path, digest, creds))
        except UpstreamUnreachable as exc:
            raise pull_error(exc, BlobUnknown("")) from None
        except UpstreamError as exc:
            raise pull_error(exc, BlobUnknown(f"upstream {match.upstream} has no blob {digest}")) from None
        return size, Result.MISS

    # -- tags and referrers --------------------------------------------------------------------

    async def tags(self, match: RuleMatch) -> tuple[list[str], bool]:
        """Every tag (from the upstream, or the cached ones when it is unavailable) and whether stale."""
        creds = await self.credentials(match.rule)
        try:
            tags = await self.upstream_call(
                match, creds, lambda up: self.upstream.tags(up, match.upstream.path, creds))
            return sorted(set(tags)), False
        except UpstreamUnreachable as exc:
            source = self.source(match)
            cached = await self.state.run(lambda s: s.tags(match.repository, source))
            if cached:
                return cached, True
            raise pull_error(exc, NameUnknown("")) from None
        except UpstreamError as exc:
            raise pull_error(exc, NameUnknown(
                f"upstream {match.upstream} has no repository {match.upstream.path}")) from None

    async def referrers(self, match: RuleMatch, digest: str) -> tuple[list[Referrer], bool]:
        """What refers to ``digest`` for this source, and whether it is stale (the upstream is down).

        From the upstream's referrers API when it has one, else from its tag-scheme index (tag
        ``sha256-<hex>``), the spec's fallback: an upstream without the API never makes existing
        referrers look absent. Kept per source and served stale while the upstream is unavailable.
        """
        creds = await self.credentials(match.rule)
        source, path = self.source(match), match.upstream.path
        try:
            body = await self.upstream_call(
                match, creds, lambda up: self.upstream.referrers(up, path, digest, creds))
            if body is not None:
                found = parse_index(body)
                if found is None:
                    raise UpstreamBadContent(f"upstream {match.upstream.login_server} answered the referrers of "
                                             f"{digest} with something that is not an OCI image index")
            else:
                try:
                    tagged = await self.upstream_call(
                        match, creds, lambda up: self.upstream.manifest(up, path, fallback_tag(digest), creds))
                    found = parse_index(tagged.content or b"") or []
                except UpstreamNotFound:
                    found = []
        except UpstreamUnreachable as exc:
            stored = await self.state.run(lambda s: s.referrers(match.repository, source, digest))
            if stored is not None:
                log.warning("serving the referrers of %s in %s stale: %s", digest, match.repository, exc)
                return from_stored(stored), True
            raise pull_error(exc, NameUnknown("")) from None
        except UpstreamError as exc:
            raise pull_error(exc, NameUnknown(f"upstream {match.upstream} has no repository {path}")) from None
        await self.state.run(lambda s: s.set_referrers(match.repository, source, digest, to_stored(found)))
        return found, False
