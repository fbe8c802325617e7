"""The registry API (OCI distribution, pull side) as a Starlette app; errors are OCI error JSON.

Names contain slashes, so one route takes everything under ``/v2/`` and the endpoint is parsed
from the end of the path, as the distribution registry does.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from regcache.proxy.core.errors import NameUnknown, PullError, ValidationError
from regcache.proxy.core.fleet import STALE_DELETED, STALE_REASON_HEADER, STALE_UNREACHABLE, VALIDATED_HEADER
from regcache.proxy.core.models import USER_AGENT_MAX_CHARS, PullEvent, Result, RuleMatch
from regcache.proxy.core.oci import OCI_INDEX
from regcache.proxy.core.references import is_digest, is_repository_name, is_tag
from regcache.proxy.core.referrers import FILTERS_APPLIED_HEADER, build_index
from regcache.proxy.core.settings import ALLOWED_HOSTS_SETTING, SERVER_LIMIT_SETTINGS, ServerLimits, parse_host_names
from regcache.proxy.core.tokens import ClientToken
from regcache.proxy.http.client_auth import ClientAuth
from regcache.proxy.http.errors import API_VERSION_HEADER, RegistryError, oci_error, unsupported
from regcache.proxy.http.fleet import PeerEndpoint, joined_fleet
from regcache.proxy.http.ranges import parse_range
from regcache.proxy.http.sendfile import ClientGone, FileRangeResponse, StreamedResponse
from regcache.proxy.jobs.eviction import run_eviction
from regcache.proxy.jobs.operations import Operations
from regcache.proxy.jobs.pruning import run_event_pruning
from regcache.proxy.jobs.tagsync import run_tag_sync
from regcache.proxy.pull.cache import PullThroughCache
from regcache.proxy.pull.events import EventLog
from regcache.proxy.pull.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from regcache.proxy.pull.metrics import ProxyMetrics
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import AsyncStateStore, StateStore
from regcache.proxy.storage.backend import open_backend
from regcache.proxy.storage.blobs import BlobStore
from regcache.proxy.storage.download import FilePiece
from regcache.proxy.upstream.client import UpstreamClient
from regcache.proxy.upstream.peer import PEER_PREFIX

log = logging.getLogger("regcache.registry")

_ENDPOINT = re.compile(
    r"(?P<name>.+)/(?:(?P<manifests>manifests)/(?P<ref>[^/]+)|(?P<uploads>blobs/uploads)(?:/.*)?|"
    r"(?P<blobs>blobs)/(?P<digest>[^/]+)|(?P<tags>tags/list)|(?P<referrers>referrers)/(?P<subject>[^/]+))",
    re.DOTALL,
)
READ_METHODS = ("GET", "HEAD")
MAX_PAGE = 10_000


def _page_size(request: Request) -> int | None:
    """The ``n`` query parameter (at most MAX_PAGE), None without one; PAGINATION_NUMBER_INVALID if malformed."""
    value = request.query_params.get("n")
    if value is None:
        return None
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses
    if re.fullmatch(r"[0-9]+", value) is None:
        raise RegistryError(400, "PAGINATION_NUMBER_INVALID",
                            f"n must be a non-negative integer (a page size, at most {MAX_PAGE:,}), not {value[:50]!r}")
    digits = value.lstrip("0") or "0"
    return MAX_PAGE if len(digits) > len(str(MAX_PAGE)) else min(int(digits), MAX_PAGE)


def _accept_list(request: Request) -> list[str]:
    types: list[str] = []
    for value in request.headers.getlist("accept"):
        for part in value.split(","):
            media_type = part.split(";")[0].strip()
            if media_type:
                types.append(media_type)
        if len(types) > 100:
            break
    return types[:100]


def _read_only_error() -> RegistryError:
    return RegistryError(405, "UNSUPPORTED", "regcache is a pull-through cache: only GET and HEAD are supported",
                         headers={"Allow": "GET, HEAD"})


def _error_response(exc: RegistryError, method: str) -> Response:
    body = exc.body()
    headers = {**API_VERSION_HEADER, **exc.headers}
    if method == "HEAD":
        return Response(b"", exc.status, headers={**headers, "Content-Length": str(len(body)),
                                                  "Content-Type": "application/json"})
    return Response(body, exc.status, headers=headers, media_type="application/json")


class Registry:
    """Request handlers over a PullThroughCache; records a pull event for every manifest and blob request."""

    def __init__(self, cache: PullThroughCache, events: EventLog, auth: ClientAuth | None = None) -> None:
        self.cache = cache
        self.events = events
        self.auth = auth

    async def __call__(self, request: Request) -> Response:
        async with self.cache.state.one_version_check():  # one configuration check for auth and rules
            return await self._answer(request)

    async def _answer(self, request: Request) -> Response:
        # client tokens: authenticate first (401 + Basic challenge), authorize once the name is known
        token = await self.auth.authenticate(request) if self.auth is not None else None
        # The path as sent after /v2/, not the route's parameter: its '$' matches before a final line break, which
        # would drop a trailing '%0a' and serve 'NAME/manifests/TAG%0a' as TAG.
        path = request.scope["path"][len("/v2/"):]
        method = request.method
        if path in ("", "/"):
            if method not in READ_METHODS:
                raise unsupported("this registry is a read-only cache")
            return JSONResponse({}, headers=API_VERSION_HEADER)
        if path == "_catalog":
            self._read_only(method)
            return await self.catalog(request, token)
        m = _ENDPOINT.fullmatch(path)
        if m is None:
            raise RegistryError(404, "NOT_FOUND", f"no registry API endpoint at /v2/{path[:200]}")
        if m.group("uploads"):
            raise unsupported("regcache is a pull-through cache: pushes are not supported")
        self._read_only(method)
        name = m.group("name")
        if not is_repository_name(name):
            raise RegistryError(400, "NAME_INVALID", "invalid repository name", {"name": name[:300]})
        if token is not None:
            await self._authorize(request, token, name)
        if m.group("manifests"):
            return await self.manifest(request, name, m.group("ref"))
        if m.group("blobs"):
            return await self.blob(request, name, m.group("digest"))
        if m.group("tags"):
            return await self.tags(request, name)
        return await self.referrers(request, name, m.group("subject"))

    @staticmethod
    def _read_only(method: str) -> None:
        if method not in READ_METHODS:
            raise _read_only_error()

    async def _authorize(self, request: Request, token: ClientToken, name: str) -> None:
        """403 DENIED unless ``token`` covers the repository; in mirror mode (``?ns=``) the target name it maps to."""
        assert self.auth is not None
        repository = name
        if request.query_params.get("ns"):
            try:
                repository = (await self.cache.resolve(name, request.query_params.get("ns"))).repository
            except NameUnknown:
                pass  # no rule: the handler answers NAME_UNKNOWN, if the token covers the name as sent
        self.auth.authorize(token, repository)

    def _event(self, request: Request, kind: str, repository: str, reference: str, result: Result, status: int,
               started: float, match: RuleMatch | None = None, size: int = 0, detail: str | None = None) -> None:
        client = request.client.host if request.client else ""
        user_agent = request.headers.get("user-agent")
        # in mirror mode (?ns=) the client's name is the upstream's: log the name it is cached under
        repository = match.repository if match is not None else repository
        self.events.record(PullEvent(client, request.method, kind, repository, reference[:200], result, status,
                                     match.rule.name if match else None, size,
                                     round((time.perf_counter() - started) * 1000, 3), detail,
                                     user_agent=user_agent[:USER_AGENT_MAX_CHARS] if user_agent else None))

    async def manifest(self, request: Request, name: str, reference: str, forward: bool = True,
                       max_age: float | None = None) -> Response:
        """A manifest for a client; ``forward=False``: for a fleet member (no negotiation, no pull counted, never
        forwarded again), with when the tag was confirmed and why it is stale, for the member to store."""
        started = time.perf_counter()
        match = None
        try:
            if ":" in reference and not is_digest(reference):
                raise RegistryError(400, "DIGEST_INVALID", "the reference is not a supported digest (sha256: or "
                                    "sha512: and its hex)", {"reference": reference[:200]})
            if not (is_tag(reference) or is_digest(reference)):
                # no such manifest can exist: 404, as the OCI conformance suite expects (not 400)
                raise RegistryError(404, "MANIFEST_UNKNOWN", "no manifest has this reference: it is not a valid "
                                    "tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127}) or digest",
                                    {"reference": reference[:200]})
            match = await self.cache.resolve(name, request.query_params.get("ns"))
            served = await self.cache.manifest(match, reference, _accept_list(request) if forward else [],
                                               count_pull=request.method == "GET" and forward, forward=forward,
                                               max_age=max_age)
        except (RegistryError, PullError) as exc:
            answer = oci_error(exc)
            self._event(request, "manifest", name, reference, Result.ERROR, answer.status, started, match,
                        detail=answer.message)
            raise answer from None
        headers = {**API_VERSION_HEADER, "Docker-Content-Digest": served.digest,
                   "Content-Type": served.media_type}
        if served.result is Result.STALE:
            headers["X-Regcache-Stale"] = "1"
        if not forward:
            if served.validated_at is not None:
                headers[VALIDATED_HEADER] = f"{served.validated_at.timestamp():.3f}"
            if served.result is Result.STALE:
                headers[STALE_REASON_HEADER] = STALE_DELETED if served.deleted else STALE_UNREACHABLE
        self._event(request, "manifest", name, reference, served.result, 200, started, match, len(served.content),
                    served.detail)
        if request.method == "HEAD":
            return Response(b"", 200, headers={**headers, "Content-Length": str(len(served.content))})
        return Response(served.content, 200, headers=headers)

    async def blob(self, request: Request, name: str, digest: str, forward: bool = True) -> Response:
        started = time.perf_counter()
        match = None
        try:
            if not is_digest(digest):
                raise RegistryError(400, "DIGEST_INVALID", "invalid or unsupported digest", {"digest": digest[:200]})
            match = await self.cache.resolve(name, request.query_params.get("ns"))
            if request.method == "HEAD":
                size, result = await self.cache.blob_size(match, digest)
                self._event(request, "blob", name, digest, result, 200, started, match)
                return Response(b"", 200, headers={**API_VERSION_HEADER, "Docker-Content-Digest": digest,
                                                   "Content-Length": str(size), "Accept-Ranges": "bytes",
                                                   "Content-Type": "application/octet-stream"})
            blob = await self.cache.blob(match, digest, forward)
            try:
                byte_range = parse_range(request.headers.get("range"), blob.size)
                if byte_range is not None:  # a part is served only from verified bytes
                    await blob.wait_verified()
            except (RegistryError, PullError):
                blob.close()
                raise
        except (RegistryError, PullError) as exc:
            answer = oci_error(exc)
            self._event(request, "blob", name, digest, Result.ERROR, answer.status, started, match,
                        detail=answer.message)
            raise answer from None
        headers = {**API_VERSION_HEADER, "Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        status = 200
        start, end = 0, blob.size
        if byte_range is not None:
            status = 206
            start, end = byte_range.start, byte_range.end
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        local = blob.local_file
        if local is not None and end is not None:  # a warm file: the server may send it without copying
            return FileRangeResponse(local, start, end, status, headers, self._transfer_ended(
                request, name, digest, blob.result, status, started, match, blob.detail))
        if end is not None:
            headers["Content-Length"] = str(end - start)
        chunks = blob.body(start, end if byte_range is not None else None)
        body = self._counted(chunks, self._transfer_ended(request, name, digest, blob.result, status, started, match,
                                                          blob.detail))
        return StreamedResponse(body, status, headers=headers)

    def _transfer_ended(self, request: Request, name: str, digest: str, result: Result, status: int,
                        started: float, match: RuleMatch | None,
                        detail: str | None) -> Callable[[int, BaseException | None], None]:
        """What records a blob transfer's event once its body ended: complete, failed (an exception of ours) or
        cut by the client (ClientGone, or a cancellation)."""
        def done(sent: int, error: BaseException | None) -> None:
            outcome, why, answered = result, detail, status
            if isinstance(error, ClientGone) or (error is not None and not isinstance(error, Exception)):
                why = f"the client went away after {sent} bytes"
            elif error is not None:
                outcome, why, answered = Result.ERROR, f"the transfer failed after {sent} bytes: {error}", 502
                log.warning("blob %s for %s: %s", digest, request.client.host if request.client else "?", why)
            self._event(request, "blob", name, digest, outcome, answered, started, match, sent, why)
        return done

    async def _counted(self, chunks: AsyncIterator[bytes | FilePiece],
                       done: Callable[[int, BaseException | None], None]) -> AsyncIterator[bytes | FilePiece]:
        """Stream ``chunks``, then tell ``done`` how many bytes went and how it ended."""
        sent, error = 0, None
        try:
            async for chunk in chunks:
                if isinstance(chunk, FilePiece):
                    try:
                        yield chunk
                    finally:  # the server says how much of it went, also when the client left during it
                        sent += chunk.sent
                    continue
                sent += len(chunk)
                yield chunk
        except BaseException as exc:
            error = exc
            raise
        finally:
            done(sent, error)

    async def tags(self, request: Request, name: str) -> Response:
        n = _page_size(request)  # a bad n is refused before the upstream is asked
        match = await self.cache.resolve(name, request.query_params.get("ns"))
        tags, stale = await self.cache.tags(match)
        last = request.query_params.get("last")
        if last:
            tags = [t for t in tags if t > last]
        headers = dict(API_VERSION_HEADER)
        if n is not None and len(tags) > n:
            tags = tags[:n]
            if tags:
                headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={tags[-1]}>; rel="next"'
        if stale:
            headers["X-Regcache-Stale"] = "1"
        return JSONResponse({"name": name, "tags": tags}, headers=headers)

    async def catalog(self, request: Request, token: ClientToken | None = None) -> Response:
        """Cached repositories; with a client token, only those it may pull."""
        n = _page_size(request)
        n = MAX_PAGE if n is None else n
        last = request.query_params.get("last")
        if token is None or token.scope.allows_all:
            names = await self.cache.state.run(lambda s: s.repository_names(last, n + 1))
        else:
            names = [r for r in await self.cache.state.run(lambda s: s.repository_names(last))
                     if token.allows(r)][:n + 1]
        headers = dict(API_VERSION_HEADER)
        if len(names) > n:
            names = names[:n]
            if names:
                headers["Link"] = f'</v2/_catalog?n={n}&last={names[-1]}>; rel="next"'
        return JSONResponse({"repositories": names}, headers=headers)

    async def referrers(self, request: Request, name: str, subject: str) -> Response:
        if not is_digest(subject):
            raise RegistryError(400, "DIGEST_INVALID", "invalid or unsupported digest", {"digest": subject[:200]})
        match = await self.cache.resolve(name, request.query_params.get("ns"))
        found, stale = await self.cache.referrers(match, subject)
        headers = dict(API_VERSION_HEADER)
        artifact_type = request.query_params.get("artifactType")
        if artifact_type is not None:
            headers[FILTERS_APPLIED_HEADER] = "artifactType"
        if stale:
            headers["X-Regcache-Stale"] = "1"
        return Response(build_index(found, artifact_type), 200, headers=headers, media_type=OCI_INDEX)


class ApiVersionHeader:
    """Puts ``Docker-Distribution-API-Version`` on every response, errors from the framework included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                name = b"docker-distribution-api-version"
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != name]
                headers.append((name, b"registry/2.0"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def _host_name(header: str) -> str:
    """The name in a ``Host`` header, lower-case, without its port or final dot (``[::1]`` keeps its brackets)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[:value.find("]") + 1] if "]" in value else value
    name, sep, port = value.rpartition(":")
    return (name if sep and port.isdigit() else value).rstrip(".")


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def loopback_host(name: str) -> bool:
    """``localhost``, or an address literal on loopback (``127.0.0.1``, ``[::1]``): names no DNS answer can move."""
    if name in _LOOPBACK_NAMES:  # what nearly every request names: no address parse per request
        return True
    try:
        address = ipaddress.ip_address(name[1:-1] if name.startswith("[") and name.endswith("]") else name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


#: the unauthenticated readiness endpoint (load balancers, Kubernetes probes): no token, no Host check
HEALTH_PATH = "/healthz"


class HostCheck:
    """On a loopback listener, answer only a ``Host`` that names this machine (or an allowed name): 403 otherwise.

    A web page the operator opens can make its own name resolve to 127.0.0.1 (DNS rebinding) and then read
    whatever a loopback listener without client tokens serves; its requests carry the page's name as ``Host``.
    A request without ``Host`` (HTTP/1.0) cannot come from a browser, and is answered.
    """

    def __init__(self, app: ASGIApp, allowed: Callable[[], tuple[str, ...]]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # readiness reveals nothing, and peers sign their requests with the fleet secret: any Host
        if scope["type"] == "http" and scope["path"] != HEALTH_PATH and not scope["path"].startswith(PEER_PREFIX):
            header = next((v for k, v in scope["headers"] if k == b"host"), None)
            name = _host_name(header.decode("latin-1")) if header is not None else None
            if name is not None and not loopback_host(name) and name not in self.allowed():
                await _error_response(self.refusal(name), scope["method"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def refusal(name: str) -> RegistryError:
        try:
            valid = parse_host_names(name) == (name,)
        except ValidationError:
            valid = False
        how = f"`regcache settings set {ALLOWED_HOSTS_SETTING} {name if valid else 'NAME'}`"
        return RegistryError(403, "DENIED", f"this regcache listens on loopback and answers only Host localhost, "
                                            f"127.0.0.1 or [::1], not {name[:100]!r} (a defence against DNS "
                                            f"rebinding); to answer that name too (e.g. an nginx on this machine "
                                            f"forwards it), run {how} and restart the proxy")


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    return _error_response(exc, request.method)


async def _metrics(app: Starlette) -> Response:
    """The Prometheus exposition of ``app``'s proxy, with the cache size read now."""
    metrics: ProxyMetrics = app.state.metrics
    state: AsyncStateStore | None = getattr(app.state, "state_store", None)
    if state is not None:
        blob_bytes, blobs, _ = await state.run(lambda s: s.cache_size())
        metrics.set_cache_size(blob_bytes, blobs)
    return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


def create_metrics_app(registry_app: Starlette, *, require_auth: bool = False, check_host: bool = False) -> Starlette:
    """A separate app serving only ``/metrics`` of ``registry_app`` (for ``--metrics-listen``).

    It asks for a client token (any) whenever ``/v2/`` does, and always with ``require_auth`` (its own
    address is beyond loopback); ``check_host`` answers only loopback ``Host`` names (see HostCheck).
    """

    async def endpoint(request: Request) -> Response:
        await registry_app.state.registry.auth.authenticate(request, require=require_auth)
        return await _metrics(registry_app)

    app = Starlette(routes=[Route("/metrics", endpoint)], exception_handlers={RegistryError: _registry_error})
    if check_host:
        app.add_middleware(HostCheck, allowed=lambda: registry_app.state.limits.allowed_hosts)
    return app


async def check_storage(home: Path, secrets: SecretResolver | None = None) -> None:
    """Raise StorageError unless the configured storage can be used (before a server starts listening)."""
    store = StateStore(home)
    try:
        async with open_backend(home, store, secrets):
            pass
    finally:
        store.close()


def create_app(home: Path, *, secrets: SecretResolver | None = None,
               transport: httpx.AsyncBaseTransport | None = None, freshness: float = 0.0,
               serve_metrics: bool = True, require_auth: bool = False, check_host: bool = False,
               serves_tls: bool = False) -> Starlette:
    """The registry ASGI app for the state directory ``home``; its lifespan owns every background task.

    ``/metrics`` is served beside ``/v2/`` unless ``serve_metrics`` is False (metrics on their own address).
    Once a client token exists every ``/v2/`` (and ``/metrics``) request needs one; ``require_auth`` refuses
    anonymous requests even while none exists (a server exposed beyond loopback). ``check_host`` (a loopback
    listener) answers only loopback ``Host`` names and the ``allowed-hosts`` setting (see HostCheck).
    The lifespan reads the server limits (``app.state.limits``) once, when it starts. ``serves_tls``: the
    listener serves https (its fleet peers are then asked over https only; see regcache.proxy.http.fleet).
    """
    metrics = ProxyMetrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = StateStore(home)
        state = AsyncStateStore(store)
        upstream = UpstreamClient(transport)
        events = EventLog(state, metrics=metrics)
        app.state.state_store = state
        app.state.limits = limits = ServerLimits.from_settings({key: store.setting(key)
                                                                for key in SERVER_LIMIT_SETTINGS})
        try:
            async with anyio.create_task_group() as writer_group:
                await writer_group.start(events.run)
                try:
                    async with open_backend(home, store, secrets, metrics.bucket_error) as backend, \
                            anyio.create_task_group() as downloads:
                        blobs = BlobStore(home, state, downloads, backend)
                        removed = blobs.remove_stale_temp_files()
                        if removed:
                            log.info("removed %d stale temporary file(s)", removed)
                        cache = PullThroughCache(state, upstream, blobs, secrets, freshness, metrics)
                        cache.accesses = events.accesses  # hits note their accesses; the event writer writes them
                        downloads.start_soon(run_eviction, state, backend, name="eviction")
                        downloads.start_soon(run_tag_sync, cache, name="tag sync")
                        downloads.start_soon(run_event_pruning, state, name="event pruning")
                        registry = Registry(cache, events, ClientAuth(state, require=require_auth, limits=limits))
                        app.state.registry = registry
                        app.state.operations = Operations(cache, home, secrets, record=events.record)
                        async with joined_fleet(state, backend, secrets or SecretResolver(), cache,
                                                downloads, serves_tls=serves_tls) as fleet_secret:
                            app.state.peer = None if fleet_secret is None else PeerEndpoint(
                                cache, fleet_secret, lambda r, n, d: registry.blob(r, n, d, forward=False),
                                lambda r, n, ref, age: registry.manifest(r, n, ref, forward=False, max_age=age))
                            app.state.ready = True
                            try:
                                yield
                            finally:
                                app.state.ready = False  # probes see the node leave before it stops answering
                                downloads.cancel_scope.cancel()
                finally:
                    events.close()
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            store.close()

    async def handle(request: Request) -> Response:
        return await request.app.state.registry(request)

    async def pull_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PullError)
        return _error_response(oci_error(exc), request.method)

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path[:300])
        return _error_response(RegistryError(500, "UNKNOWN", "internal error; see the regcache log"), request.method)

    async def framework_error(request: Request, exc: Exception) -> Response:
        """Starlette's own refusals: no route for the path (outside /v2/, or a name with a line break), or a
        method no route takes (TRACE, PROPFIND, lower-case names)."""
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            error = RegistryError(404, "NOT_FOUND", f"no registry API endpoint at {request.url.path[:200]!r}; "
                                                    f"the OCI distribution API is under /v2/")
        elif exc.status_code == 405:
            error = _read_only_error()
        else:
            error = RegistryError(exc.status_code, "UNSUPPORTED" if exc.status_code < 500 else "UNKNOWN", exc.detail,
                                  headers=dict(exc.headers or {}))
        return _error_response(error, request.method)

    async def metrics_endpoint(request: Request) -> Response:
        await request.app.state.registry.auth.authenticate(request)  # any token, whenever /v2/ needs one
        return await _metrics(request.app)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    async def health_endpoint(request: Request) -> Response:
        """Readiness for load balancers and probes: the engine runs. Unauthenticated, so it says nothing else."""
        ready = getattr(request.app.state, "ready", False)
        return JSONResponse({"status": "ok" if ready else "starting"}, 200 if ready else 503,
                            headers={"Cache-Control": "no-store"})

    async def peer_endpoint(request: Request) -> Response:
        peer = getattr(request.app.state, "peer", None)
        if peer is None:
            raise RegistryError(404, "NOT_FOUND", "this node is in no fleet (s3 storage, fleet-address and "
                                                  "fleet-secret make one)")
        return await peer(request)

    routes = [Route("/v2/{path:path}", handle, methods=methods), Route("/v2", handle, methods=methods),
              Route(HEALTH_PATH, health_endpoint, methods=["GET", "HEAD"]),
              Route(PEER_PREFIX + "{path:path}", peer_endpoint, methods=["GET"])]
    if serve_metrics:
        routes.append(Route("/metrics", metrics_endpoint))
    app = Starlette(
        routes=routes,
        exception_handlers={RegistryError: _registry_error, PullError: pull_error, HTTPException: framework_error,
                            Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.add_middleware(ApiVersionHeader)
    if check_host:
        app.add_middleware(HostCheck, allowed=lambda: app.state.limits.allowed_hosts)
    app.state.metrics = metrics
    return app
