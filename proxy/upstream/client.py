"""UpstreamClient: every request regcache makes to an upstream registry.

It answers ``WWW-Authenticate`` challenges (Basic with the rule's credential set; Bearer with a
token fetched anonymously or with the credential set, cached until it expires, within bounds) and
follows redirects itself, hop by hop under the outbound policy (:mod:`.policy`): ``Authorization``
is only ever sent to the upstream's own origin, targets outside its own and allowed origins go through
a public-addresses-only connection pool, and https never leads to http. Logs never carry a query
string of an upstream URL (presigned redirects sign there) nor an ``Authorization`` value.

TLS is verified against the operating system's trust store, and for an upstream's own origin also against
the CA bundle it names (:mod:`.tls`): one client per distinct bundle, read again on every configuration reload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpcore
import httpx

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import ANONYMOUS, AuthPolicy, Upstream
from regcache.proxy.core.oci import MANIFEST_TYPES, OCI_INDEX, load_json, media_type_of
from regcache.proxy.core.references import is_tag
from regcache.proxy.core.settings import (
    BLOB_MAX_SIZE_SETTING,
    BLOB_MIN_RATE_SETTING,
    BLOB_RATE_WINDOW_SETTING,
    LIST_MAX_SIZE_SETTING,
    MANIFEST_MAX_SIZE_SETTING,
    TOKEN_MAX_SIZE_SETTING,
    UPSTREAM_DEADLINE_SETTING,
    UpstreamLimits,
)
from regcache.proxy.core.units import format_size
from regcache.proxy.upstream.auth import Challenge, TokenCache, basic_header, parse_challenge, token_lifetime
from regcache.proxy.upstream.policy import (
    OutboundRefused,
    PublicAddressBackend,
    PublicOnlyTransport,
    Route,
    is_own_origin,
    origin,
    realm_route,
    redact_url,
    route,
)
from regcache.proxy.upstream.read_ahead import Consume, OneAnswerTransport, ReadAheadBackend, ReadAheadStream
from regcache.proxy.upstream.tls import CaBundle, bundle_context, read_ca_bundle, system_context, tls_error

log = logging.getLogger(__name__)

# httpcore reads HTTP/1.1 bodies 64 KiB at a time and offers no setting for it; at blob sizes the
# per-read overhead (timeouts, scheduling, copies) was a fifth of the proxy's CPU in
# bench/pull_bench.py. A read returns what is available, so small responses are unaffected.
# tests/proxy/test_upstream.py checks that the attribute still exists.
UPSTREAM_READ_BYTES = 1024 * 1024
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = UPSTREAM_READ_BYTES

log = logging.getLogger("regcache.upstream")

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=30.0)

# A query string after a URL path (presigned CDN URLs carry their signature there) and the value of a
# header that carries a login, as httpx (INFO: every request's URL) and httpcore (DEBUG: response headers,
# redirect locations included) write them into their log messages.
_QUERY = re.compile(r"(?<=[\w/.~%-])\?[^\s'\"\\]+")
_SECRET_HEADER = re.compile(r"((?:authorization|proxy-authorization|cookie|set-cookie)(?:['\"],\s*b?['\"]|:\s*))"
                            r"[^'\"\r\n]*", re.IGNORECASE)


class RedactedHTTPLog(logging.Filter):
    """Rewrites httpx's and httpcore's log records without query strings or login header values."""

    LOGGERS = ("httpx", "httpcore.http11", "httpcore.http2", "httpcore.connection", "httpcore.proxy",
               "httpcore.socks")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted cannot be redacted either: drop it, never raise
            return False
        record.msg = _SECRET_HEADER.sub(r"\1<redacted>", _QUERY.sub("?<redacted>", message))
        record.args = None
        return True

    @classmethod
    def install(cls) -> None:
        """Filter those loggers once per process (a logger's filters apply to what it logs itself)."""
        for name in cls.LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, cls) for f in logger.filters):
                logger.addFilter(cls())


RedactedHTTPLog.install()


@dataclass(frozen=True, slots=True)
class Credentials:
    """An upstream login resolved from a credential set; ``repr`` never shows the secrets."""

    identity: str  # the credential set's name
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials({self.identity!r})"

    @property
    def login_key(self) -> str:
        """What cached logins (Basic headers, bearer tokens) are kept under: the set's name and a hash of
        the secret values, so a set pointed at other secrets, or a rotated secret, never reuses the old
        login (the hash stays in memory, and the values cannot be read back from it)."""
        secrets = "\n".join((self.username, self.password)).encode()
        return f"{self.identity}#{hashlib.sha256(secrets).hexdigest()}"


class UpstreamError(Exception):
    """An upstream request failed; ``str()`` names the upstream and the cause, never a secret."""

    def __init__(self, login_server: str, message: str, status: int | None = None) -> None:
        super().__init__(f"upstream {login_server}: {message}")
        self.login_server = login_server
        self.status = status


class UpstreamUnreachable(UpstreamError):
    """Unreachable, timed out, 5xx or 429: a cached copy may be served stale."""


class UpstreamAuthError(UpstreamError):
    """The upstream refused our (anonymous or credential-set) login."""


class UpstreamNotFound(UpstreamError):
    """The upstream has no such repository, manifest or blob."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something we cannot use."""


class UpstreamRefused(UpstreamProtocolError):
    """The upstream led to a redirect target or token realm the outbound policy refuses (nothing was sent)."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What an upstream said of our pull budget: ``100;w=21600`` style values, and 429s seen."""

    limit: str | None
    remaining: str | None
    throttled: int


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    digest: str | None  # Docker-Content-Digest, when the upstream sent one
    media_type: str
    size: int
    content: bytes | None  # None for HEAD


class UpstreamBlob:
    """An answer to a blob GET (from an upstream, ``server``, or a fleet member): its announced size and its bytes,
    within the blob limits."""

    def __init__(self, server: str, digest: str, response: httpx.Response, size: int | None,
                 limits: UpstreamLimits) -> None:
        self.server = server
        self.digest = digest
        #: the announced Content-Length (None when the upstream sent the body chunked)
        self.size = size
        self._response = response
        self._limits = limits

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the network delivers it, uncopied; raises past the size limit or below the minimum rate.

        The rate is enforced by a deadline that moves: each window must bring ``blob_min_rate * window``
        bytes, or the read in progress is cancelled, however the upstream spaces its bytes.
        """
        limits = self._limits
        rate = _MinimumRate(limits)
        received = 0
        reads = self._response.aiter_raw()  # without a size: what each network read returned, uncopied
        while True:
            # the scope covers the read only: a cancel scope must never be open across a yield
            with anyio.CancelScope(deadline=rate.deadline) as watchdog:
                try:
                    chunk = await anext(reads)
                except StopAsyncIteration:
                    return
            if watchdog.cancelled_caught:
                raise self._too_slow(received)
            received += len(chunk)
            if received > limits.blob_bytes:
                raise _too_large(self.server, f"blob {self.digest}", limits.blob_bytes, BLOB_MAX_SIZE_SETTING)
            rate.moved(len(chunk))
            yield chunk

    def _too_slow(self, received: int) -> UpstreamUnreachable:
        limits = self._limits
        return UpstreamUnreachable(
            self.server, f"sent blob {self.digest} slower than {format_size(limits.blob_min_rate)}/s over "
            f"{max(limits.blob_rate_window, 1.0):g} s; cut after {format_size(received)} "
            f"(the {BLOB_MIN_RATE_SETTING} and {BLOB_RATE_WINDOW_SETTING} settings)")

    def receive(self, consume: Consume) -> AsyncGenerator[int, None] | None:
        """The body handed to ``consume`` on its connection's own thread as it arrives (the event loop parses,
        copies and hashes none of it), with the limits of :meth:`chunks`; yields the bytes consumed so far, and
        returns once nothing calls ``consume`` any more. None when the answer cannot be taken so: not on a
        read-ahead connection, no Content-Length, a chunked body, an interim head before it (read
        :meth:`chunks` instead). Close the iterator (``aclosing``) before closing what ``consume`` writes to."""
        stream = self._response.extensions.get("network_stream")
        size = self.size
        if not isinstance(stream, ReadAheadStream) or size is None or "transfer-encoding" in self._response.headers \
                or not stream.can_take_body(size):
            return None
        return self._received(stream, size, consume)

    async def _received(self, stream: ReadAheadStream, size: int, consume: Consume) -> AsyncGenerator[int, None]:
        rate = _MinimumRate(self._limits)
        timeout = self._response.request.extensions.get("timeout", {}).get("read")
        seen = 0
        try:  # taken once started, so that end_body runs whatever happens (never started: nothing was taken)
            if not stream.take_body(size, consume):
                raise httpx.ReadError("the upstream's answer was closed before its body was read")
            await anyio.to_thread.run_sync(stream.feed_received)
            while seen < size:
                with anyio.CancelScope(deadline=rate.deadline) as watchdog:
                    consumed = await stream.body_consumed(seen, timeout)
                if watchdog.cancelled_caught:
                    raise self._too_slow(seen)
                rate.moved(consumed - seen)
                seen = consumed
                yield seen
        finally:
            await stream.end_body()


class _MinimumRate:
    """The moving deadline of a blob's minimum rate: each window must bring ``blob_min_rate * window`` bytes,
    however the upstream spaces them (no deadline when the rate is 0)."""

    def __init__(self, limits: UpstreamLimits) -> None:
        self._window = max(limits.blob_rate_window, 1.0)
        self._wanted = limits.blob_min_rate * self._window
        self._in_window = 0
        self.deadline = anyio.current_time() + self._window if self._wanted > 0 else math.inf

    def moved(self, count: int) -> None:
        """``count`` more bytes arrived: a window that brought enough starts the next one."""
        if self._wanted <= 0:
            return
        self._in_window += count
        if self._in_window >= self._wanted:
            self._in_window = 0
            self.deadline = anyio.current_time() + self._window


def _cause(exc: Exception) -> str:
    kind = {
        httpx.ConnectError: "unreachable (connection failed)",
        httpx.ConnectTimeout: "unreachable (connect timed out)",
        httpx.ReadTimeout: "timed out waiting for data",
        httpx.RemoteProtocolError: "closed the connection",
    }
    for cls, text in kind.items():
        if isinstance(exc, cls):
            return text
    return f"request failed ({type(exc).__name__})"


def _too_large(server: str, what: str, limit: int, setting: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(server, f"sent {what} larger than {format_size(limit)}; nothing was "
                                 f"stored (raise the {setting} setting if it is genuine: "
                                 f"`regcache settings set {setting} SIZE`)")


def _add_command(upstream: Upstream, origins: Iterable[str] = (), ca_bundle: str | None = None) -> str:
    """The `upstream add` command that keeps what ``upstream`` has (add replaces it all) with ``origins`` and
    ``ca_bundle`` (when given) added."""
    parts = ["regcache upstream add", f"--login-server {upstream.login_server}", f"--url {upstream.base_url}"]
    if not upstream.builtin and upstream.auth_policy is not AuthPolicy.BOTH:  # add without --auth resets it
        parts.append(f"--auth {upstream.auth_policy.value}")
    parts += [f"--allow-origin {o}" for o in (*upstream.allowed_origins, *origins)]
    bundle = ca_bundle or upstream.ca_bundle
    if bundle:
        parts.append(f"--ca-bundle {bundle}")
    return f"`{' '.join(parts)}`"


def _allow_hint(upstream: Upstream, origin: str) -> str:
    """The command that allows ``origin`` for ``upstream``, keeping the origins it allows already."""
    return _add_command(upstream, [origin])


def _tls_failure(upstream: Upstream, url: httpx.URL, own: bool, exc: ssl.SSLError) -> UpstreamUnreachable:
    """What a client is told when TLS with ``url`` failed: whose certificate, why, and what to do about it."""
    where = f"[{url.host}]:{url.port or 443}" if ":" in url.host else f"{url.host}:{url.port or 443}"
    if not isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamUnreachable(upstream.login_server, f"TLS handshake with {where} failed "
                                                          f"({exc.reason or type(exc).__name__})")
    why = exc.verify_message or exc.reason or "certificate verify failed"
    if not own:
        advice = (f"it is not the upstream's own origin, so only the operating system's trust store is used (a CA "
                  f"bundle covers {origin(upstream.base_url)} alone): install its CA there")
    elif upstream.ca_bundle:
        advice = (f"neither its CA bundle {upstream.ca_bundle} nor the operating system's trust store holds a CA "
                  f"that signed it; put the right CA certificate in that file, then run "
                  f"{_add_command(upstream)} again to reload it")
    else:
        advice = (f"if a private CA signed it, pass that CA's certificate (a PEM file) with --ca-bundle: "
                  f"{_add_command(upstream, ca_bundle='CA.pem')}")
    return UpstreamUnreachable(upstream.login_server, f"the TLS certificate of {where} is not trusted ({why}); "
                                                      f"{advice}")


def _bundle_or_problem(path: str, max_bytes: int) -> CaBundle | str:
    """The CA bundle at ``path``, or why it cannot be used (blocking: a worker thread runs it)."""
    try:
        return read_ca_bundle(path, max_bytes)
    except ValidationError as exc:
        return exc.message


class UpstreamClient:
    """Long-lived HTTP clients for all upstreams; pass ``transport`` (and ``public_transport``) for socket-free
    tests.

    ``_client`` reaches upstreams and the origins allowed for them; ``_public`` reaches every other redirect
    target and token realm, on public addresses only (:class:`~.policy.PublicOnlyTransport`). Each has a twin
    for blob answers (``bulk``), whose connections are received on threads of their own and carry one answer
    each (:mod:`.read_ahead` says why).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: httpx.Timeout = DEFAULT_TIMEOUT,
                 public_transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._timeout = timeout
        self._pool_limits = limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        #: the operating system's trust store (truststore), which every connection without a CA bundle verifies
        self.ssl_context = system_context()
        self._client = self._new_client(self.ssl_context)
        self._bulk = self._new_client(self.ssl_context, bulk=True)
        self._public = self._http_client(public_transport or transport or PublicOnlyTransport(
            limits, ssl_context=self.ssl_context))
        self._public_bulk = self._http_client(public_transport or transport or PublicOnlyTransport(
            httpx.Limits(max_connections=limits.max_connections, max_keepalive_connections=0),
            PublicAddressBackend(ReadAheadBackend()), self.ssl_context))
        #: the CA bundles upstreams name, by path, as last read: the bundle, or why it cannot be used
        self._bundles: dict[str, CaBundle | str] = {}
        #: clients per distinct CA bundle (by fingerprint, and whether bulk), for the own origins of the upstreams
        #: naming it
        self._bundle_clients: dict[tuple[str, bool], httpx.AsyncClient] = {}
        #: clients of bundles no upstream names any more: a pull may still stream through one; closed on aclose
        self._retired: list[httpx.AsyncClient] = []
        self.tokens = TokenCache()
        #: what one answer may cost (the proxy sets them from its settings)
        self.limits = UpstreamLimits()
        #: token requests made, per realm: tests and metrics read it
        self.token_requests = 0
        #: the last rate-limit budget per (login server, credential set or ANONYMOUS)
        self.rate_limits: dict[tuple[str, str], RateLimit] = {}
        self._rate_limits_changed: dict[tuple[str, str], int] = {}

    async def aclose(self) -> None:
        for client in (self._client, self._bulk, self._public, self._public_bulk, *self._bundle_clients.values(),
                       *self._retired):
            await client.aclose()
        self._bundle_clients.clear()
        self._retired.clear()

    # -- TLS trust: the system store, and CA bundles -------------------------------------------

    #: retired bundle clients kept open for pulls still streaming through them; past it the oldest is closed
    MAX_RETIRED_CLIENTS = 8

    def _new_client(self, ssl_context: ssl.SSLContext, bulk: bool = False) -> httpx.AsyncClient:
        transport = self._transport
        if transport is None and bulk:
            transport = OneAnswerTransport(self._pool_limits.max_connections, ssl_context)
        return self._http_client(transport, ssl_context)

    def _http_client(self, transport: httpx.AsyncBaseTransport | None,
                     verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
        """An httpx client over ``transport`` (httpx's own, verifying against ``verify``, when None)."""
        return httpx.AsyncClient(transport=transport, verify=verify, timeout=self._timeout, follow_redirects=False,
                                 limits=self._pool_limits, headers={"User-Agent": "regcache"})

    async def reload_ca_bundles(self, upstreams: Iterable[Upstream]) -> None:
        """Read the CA bundle of every upstream in ``upstreams`` again (the configuration was reloaded).

        A bundle that changed gets a new client; one that can no longer be read (gone, changed into something
        else) fails its upstreams' requests with an error naming it until a reload finds it usable again.
        Never raises: one upstream's bad bundle must not stop the others.
        """
        paths = sorted({u.ca_bundle for u in upstreams if u.ca_bundle})
        limit = self.limits.ca_bundle_bytes
        loaded = await anyio.to_thread.run_sync(lambda: {path: _bundle_or_problem(path, limit) for path in paths}) \
            if paths else {}
        for path, bundle in loaded.items():
            if isinstance(bundle, str) and self._bundles.get(path) != bundle:
                log.warning("%s; pulls from the upstreams naming it fail until it is fixed", bundle)
        self._bundles = loaded
        wanted = {b.fingerprint for b in loaded.values() if isinstance(b, CaBundle)}
        for key in [k for k in self._bundle_clients if k[0] not in wanted]:
            self._retired.append(self._bundle_clients.pop(key))
        while len(self._retired) > self.MAX_RETIRED_CLIENTS:
            await self._retired.pop(0).aclose()

    async def _own_origin_client(self, upstream: Upstream, bulk: bool = False) -> httpx.AsyncClient:
        """The client for ``upstream``'s own origin: the system store's, or its CA bundle's (read if it was not
        read since the configuration was loaded); UpstreamUnreachable naming the bundle when it is unusable."""
        path = upstream.ca_bundle
        if path is None:
            return self._bulk if bulk else self._client
        bundle = self._bundles.get(path)
        if bundle is None:
            bundle = await anyio.to_thread.run_sync(_bundle_or_problem, path, self.limits.ca_bundle_bytes)
            self._bundles[path] = bundle
        if isinstance(bundle, str):
            raise UpstreamUnreachable(upstream.login_server, f"cannot verify TLS: {bundle}; fix the file, then run "
                                                             f"{_add_command(upstream)} again to reload it")
        client = self._bundle_clients.get((bundle.fingerprint, bulk))
        if client is None:
            client = self._bundle_clients[(bundle.fingerprint, bulk)] = self._new_client(bundle_context(bundle), bulk)
        return client

    async def _client_for(self, upstream: Upstream, target: httpx.URL, trusted: bool,
                          bulk: bool = False) -> httpx.AsyncClient:
        """The client reaching ``target``: its upstream's own origin with the upstream's trust, other trusted
        (allowed) origins with the system store, anything else through the public-addresses-only pool; of blob
        answers (``bulk``), the twin whose connections receive on threads of their own."""
        if not trusted:
            return self._public_bulk if bulk else self._public
        if is_own_origin(upstream, target):
            return await self._own_origin_client(upstream, bulk)
        return self._bulk if bulk else self._client

    # -- plumbing ----------------------------------------------------------------------------

    def _refused(self, upstream: Upstream, what: str, exc: OutboundRefused,
                 target: httpx.URL | None = None) -> UpstreamRefused:
        """The error for a refused target (``what``: "a redirect to"...): why, and how to allow it if it can be."""
        shown = exc.origin
        if target is not None:  # the public pool names only the host it refused: show the whole origin
            try:
                shown = origin(target)
            except OutboundRefused:
                pass
        if exc.allowable:
            advice = f"if that origin is genuine, allow it for this upstream: {_allow_hint(upstream, shown)}"
        else:
            advice = "regcache never allows that"
        log.warning("upstream %s: refused %s %s, which %s", upstream.login_server, what, shown, exc.reason)
        return UpstreamRefused(upstream.login_server, f"refused {what} {shown}, which {exc.reason}; nothing was "
                                                      f"fetched from it or stored ({advice})")

    async def _send_following_redirects(self, upstream: Upstream, method: str, url: str,
                                        headers: dict[str, str], stream: bool, bulk: bool = False) -> httpx.Response:
        """Send, following redirects hop by hop under the outbound policy (the first hop too: a ``Link`` to a
        next page may lead anywhere); ``Authorization`` only ever goes to the upstream's own origin."""
        previous: httpx.URL | str = upstream.base_url
        target = httpx.URL(url)
        what = "a link to"
        for _ in range(MAX_REDIRECTS + 1):
            try:
                trusted = route(upstream, previous, target) is Route.TRUSTED
            except OutboundRefused as exc:
                raise self._refused(upstream, what, exc) from None
            client = await self._client_for(upstream, target, trusted, bulk)
            own = is_own_origin(upstream, target)
            if not own:
                # another origin (a blob CDN, even an allowed one) never gets our upstream login
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            request = client.build_request(method, target, headers=headers)
            try:
                response = await client.send(request, stream=stream)
            except OutboundRefused as exc:  # the public pool found the name on a non-public address
                raise self._refused(upstream, what, exc, target) from None
            except httpx.HTTPError as exc:
                failure = tls_error(exc)
                if failure is not None:
                    raise _tls_failure(upstream, target, own, failure) from None
                raise UpstreamUnreachable(upstream.login_server, f"{_cause(exc)} at {target.host}") from None
            location = response.headers.get("location")
            if response.status_code not in REDIRECTS or not location:
                return response
            await response.aclose()
            previous = target
            try:
                target = response.url.join(location)
            except httpx.InvalidURL:
                raise UpstreamProtocolError(upstream.login_server, "sent a redirect to an invalid URL") from None
            what = "a redirect to"
            log.debug("upstream %s: redirected to %s", upstream.login_server, redact_url(target))
        raise UpstreamProtocolError(upstream.login_server, f"more than {MAX_REDIRECTS} redirects")

    async def _authorize(self, upstream: Upstream, challenge: Challenge | None, scope: str,
                         creds: Credentials | None) -> tuple[str, float]:
        """The Authorization header answering ``challenge``, and how long it may be reused (finite, bounded)."""
        server = upstream.login_server
        who = f"credential set {creds.identity!r}" if creds else "anonymous pulls"
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise UpstreamAuthError(server, f"asks for authentication regcache does not support "
                                            f"({challenge.scheme if challenge else 'no challenge'})", 401)
        if challenge.scheme == "basic":
            if creds is None:
                raise UpstreamAuthError(server, "requires a login: attach a credential set to the cache rule", 401)
            return basic_header(creds.username, creds.password), 3600.0
        realm = challenge.realm
        if not realm:
            raise UpstreamProtocolError(server, "sent a Bearer challenge without a realm")
        try:
            realm_url = httpx.URL(realm)
            trusted = realm_route(upstream, realm_url, creds is not None) is Route.TRUSTED
        except httpx.InvalidURL:
            raise UpstreamProtocolError(server, "sent a Bearer challenge whose realm is not a URL") from None
        except OutboundRefused as exc:
            raise self._refused(upstream, "the token service at", exc) from None
        client = await self._client_for(upstream, realm_url, trusted)
        params = {k: v for k, v in (("service", challenge.params.get("service")),
                                    ("scope", challenge.params.get("scope") or scope)) if v}
        headers = {"Authorization": basic_header(creds.username, creds.password)} if creds else {}
        self.token_requests += 1
        try:
            request = client.build_request("GET", realm_url, params=params, headers=headers)
            response = await client.send(request, stream=True)
            content = await self._read(upstream, response, self.limits.token_bytes, TOKEN_MAX_SIZE_SETTING,
                                       "token service answer")
        except OutboundRefused as exc:
            raise self._refused(upstream, "the token service at", exc, realm_url) from None
        except httpx.HTTPError as exc:
            failure = tls_error(exc)
            if failure is not None:
                raise _tls_failure(upstream, realm_url, is_own_origin(upstream, realm_url), failure) from None
            raise UpstreamUnreachable(server, f"token service {realm_url.host} {_cause(exc)}") from None
        if response.status_code in (401, 403):
            raise UpstreamAuthError(server, f"token service refused {who} (HTTP {response.status_code})",
                                    response.status_code)
        if response.status_code >= 500 or response.status_code == 429:
            raise UpstreamUnreachable(server, f"token service answered HTTP {response.status_code}",
                                      response.status_code)
        try:
            body = json.loads(content)
            token = body.get("token") or body.get("access_token")
            expires_in = body.get("expires_in")
        except (ValueError, AttributeError, TypeError, RecursionError):
            token = expires_in = None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            raise UpstreamProtocolError(server, f"token service answered HTTP {response.status_code} "
                                                f"without a token")
        return f"Bearer {token}", token_lifetime(expires_in, self.limits.token_lifetime)

    async def _read(self, upstream: Upstream, response: httpx.Response, limit: int, setting: str,
                    what: str) -> bytes:
        """The body of a streamed ``response``, refused (and the connection dropped) past ``limit`` bytes."""
        try:
            announced = response.headers.get("content-length")
            if announced and announced.isdigit() and int(announced) > limit:
                raise _too_large(upstream.login_server, what, limit, setting)
            chunks, size = [], 0
            # decoded bytes are what is counted: a compressed body cannot get round the limit
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise _too_large(upstream.login_server, what, limit, setting)
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()

    async def _request_body(self, upstream: Upstream, repository: str, method: str, url: str,
                            creds: Credentials | None, limit: int, setting: str, what: str,
                            headers: dict[str, str] | None = None) -> tuple[httpx.Response, bytes]:
        """:meth:`_request` and its whole body, read within ``limit`` bytes (the ``setting`` that says so)."""
        response = await self._request(upstream, repository, method, url, creds, headers, stream=True)
        return response, await self._read(upstream, response, limit, setting, what)

    @asynccontextmanager
    async def _deadline(self, upstream: Upstream, what: str) -> AsyncIterator[None]:
        """The whole call within the upstream-deadline setting, however slowly the upstream answers."""
        try:
            with anyio.fail_after(self.limits.deadline):
                yield
        except TimeoutError:
            raise UpstreamUnreachable(upstream.login_server, f"did not finish {what} within "
                                      f"{self.limits.deadline:g} s (the {UPSTREAM_DEADLINE_SETTING} setting)") from None

    async def _request(self, upstream: Upstream, repository: str, method: str, url: str,
                       creds: Credentials | None, headers: dict[str, str] | None = None,
                       stream: bool = False, bulk: bool = False) -> httpx.Response:
        """Send with the cached login, answering one 401 challenge; errors for 401/403/429/5xx. ``bulk``: a blob's
        answer, received on a thread of its own (:mod:`.read_ahead`)."""
        key = (upstream.login_server, repository, creds.login_key if creds else None)
        scope = f"repository:{repository}:pull"
        auth = self.tokens.get(key)
        for attempt in (1, 2):
            send_headers = dict(headers or {})
            if auth:
                send_headers["Authorization"] = auth
            response = await self._send_following_redirects(upstream, method, url, send_headers, stream, bulk)
            if response.status_code != 401 or attempt == 2:
                break
            challenge = parse_challenge(response.headers.get("www-authenticate", ""))
            await response.aclose()
            auth, lifetime = await self._authorize(upstream, challenge, scope, creds)
            self.tokens.put(key, auth, lifetime, self.limits.token_lifetime)
        status = response.status_code
        self._observe_rate_limit(upstream, creds, response)
        if status in (401, 403):
            await response.aclose()
            self.tokens.forget(key)
            who = f"the credentials of credential set {creds.identity!r}" if creds else "anonymous access"
            raise UpstreamAuthError(upstream.login_server, f"refused {who} to {repository} (HTTP {status})", status)
        if status == 429 or status >= 500:
            await response.aclose()
            what = "is rate-limiting (HTTP 429)" if status == 429 else f"answered HTTP {status}"
            raise UpstreamUnreachable(upstream.login_server, what, status)
        return response

    def _observe_rate_limit(self, upstream: Upstream, creds: Credentials | None, response: httpx.Response) -> None:
        """Keep the budget the upstream announced (Docker Hub's ratelimit-* headers) and count its 429s."""
        limit = response.headers.get("ratelimit-limit")
        remaining = response.headers.get("ratelimit-remaining")
        throttled = response.status_code == 429
        if limit is None and remaining is None and not throttled:
            return
        key = (upstream.login_server, creds.identity if creds else ANONYMOUS)
        previous = self.rate_limits.get(key)
        self.rate_limits[key] = RateLimit(
            limit if limit is not None else previous.limit if previous else None,
            remaining if remaining is not None else previous.remaining if previous else None,
            (previous.throttled if previous else 0) + int(throttled))
        self._rate_limits_changed[key] = self._rate_limits_changed.get(key, 0) + int(throttled)

    def take_rate_limit_changes(self) -> dict[tuple[str, str], tuple[RateLimit, int]]:
        """Budgets that changed since the last call, with the 429s seen since then (for the state database)."""
        changed = {key: (self.rate_limits[key], new_429s) for key, new_429s in self._rate_limits_changed.items()}
        self._rate_limits_changed.clear()
        return changed

    def _url(self, upstream: Upstream, repository: str, suffix: str) -> str:
        return f"{upstream.base_url}/v2/{repository}/{suffix}"

    # -- the registry API ----------------------------------------------------------------------

    async def check_login(self, upstream: Upstream, creds: Credentials) -> bool:
        """Log in as ``docker login`` does: GET /v2/, answer its challenge with ``creds`` (Basic, or a token
        request without a repository scope) and GET /v2/ again with the answer.

        True when the upstream accepted the login; False when it never asked for one; UpstreamAuthError when
        it refused it; UpstreamUnreachable or UpstreamProtocolError when it could not tell.
        """
        server = upstream.login_server
        url = f"{upstream.base_url}/v2/"

        async def get(headers: dict[str, str]) -> httpx.Response:
            response = await self._send_following_redirects(upstream, "GET", url, headers, stream=True)
            await response.aclose()
            self._observe_rate_limit(upstream, creds, response)
            if response.status_code == 429 or response.status_code >= 500:
                raise UpstreamUnreachable(server, f"answered HTTP {response.status_code} to a login",
                                          response.status_code)
            return response

        async with self._deadline(upstream, "a login"):
            response = await get({})
            if response.status_code != 401:
                if 200 <= response.status_code < 300:
                    return False
                raise UpstreamProtocolError(server, f"answered HTTP {response.status_code} at /v2/",
                                            response.status_code)
            challenge = parse_challenge(response.headers.get("www-authenticate", ""))
            auth, _ = await self._authorize(upstream, challenge, "", creds)
            response = await get({"Authorization": auth})
        if response.status_code in (401, 403):
            raise UpstreamAuthError(server, f"refused the credentials of credential set {creds.identity!r} "
                                            f"(HTTP {response.status_code})", response.status_code)
        if not 200 <= response.status_code < 300:
            raise UpstreamProtocolError(server, f"answered HTTP {response.status_code} to a login at /v2/",
                                        response.status_code)
        return True

    async def manifest(self, upstream: Upstream, repository: str, reference: str, creds: Credentials | None,
                       method: str = "GET") -> UpstreamManifest:
        """GET or HEAD a manifest by tag or digest, accepting every manifest type we can store."""
        async with self._deadline(upstream, f"the manifest {repository}:{reference}"):
            return await self._manifest(upstream, repository, reference, creds, method)

    async def _manifest(self, upstream: Upstream, repository: str, reference: str, creds: Credentials | None,
                        method: str) -> UpstreamManifest:
        response, body = await self._request_body(
            upstream, repository, method, self._url(upstream, repository, f"manifests/{reference}"), creds,
            self.limits.manifest_bytes, MANIFEST_MAX_SIZE_SETTING, f"the manifest {repository}:{reference}",
            {"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code == 404:
            raise UpstreamNotFound(upstream.login_server, f"has no manifest {repository}:{reference}", 404)
        if response.status_code != 200:
            raise UpstreamProtocolError(upstream.login_server, f"answered HTTP {response.status_code} for "
                                                               f"manifest {repository}:{reference}",
                                        response.status_code)
        content = body if method == "GET" else None
        declared = response.headers.get("content-type")
        size = len(content) if content is not None else int(response.headers.get("content-length") or 0)
        media_type = media_type_of(content, declared) if content is not None else (
            (declared or "").split(";")[0].strip())
        return UpstreamManifest(response.headers.get("docker-content-digest"), media_type, size, content)

    @asynccontextmanager
    async def blob(self, upstream: Upstream, repository: str, digest: str,
                   creds: Credentials | None) -> AsyncIterator[UpstreamBlob]:
        """A streaming GET of a blob (redirects to a CDN followed without our login), within the blob limits:
        the answer must start within the rate window, an announced size over the maximum is refused unread,
        and the body is cut past the maximum or when it moves slower than the minimum rate."""
        limits = self.limits
        window = max(limits.blob_rate_window, 1.0)
        with anyio.CancelScope(deadline=anyio.current_time() + window) as watchdog:
            response = await self._request(upstream, repository, "GET", self._url(upstream, repository,
                                                                                 f"blobs/{digest}"), creds,
                                           stream=True, bulk=True)
        if watchdog.cancelled_caught:
            raise UpstreamUnreachable(upstream.login_server, f"did not start sending blob {digest} within "
                                      f"{window:g} s (the {BLOB_RATE_WINDOW_SETTING} setting)")
        try:
            if response.status_code == 404:
                raise UpstreamNotFound(upstream.login_server, f"has no blob {digest} in {repository}", 404)
            if response.status_code != 200:
                raise UpstreamProtocolError(upstream.login_server,
                                            f"answered HTTP {response.status_code} for blob {digest}",
                                            response.status_code)
            announced = response.headers.get("content-length")
            size = int(announced) if announced and announced.isdigit() else None
            if size is not None and size > limits.blob_bytes:
                raise _too_large(upstream.login_server, f"blob {digest} ({format_size(size)})", limits.blob_bytes,
                                 BLOB_MAX_SIZE_SETTING)
            yield UpstreamBlob(upstream.login_server, digest, response, size, limits)
        finally:
            await response.aclose()

    async def blob_size(self, upstream: Upstream, repository: str, digest: str,
                        creds: Credentials | None) -> int:
        """HEAD a blob: its size, or UpstreamNotFound."""
        response = await self._request(upstream, repository, "HEAD",
                                       self._url(upstream, repository, f"blobs/{digest}"), creds)
        if response.status_code == 404:
            raise UpstreamNotFound(upstream.login_server, f"has no blob {digest} in {repository}", 404)
        if response.status_code != 200:
            raise UpstreamProtocolError(upstream.login_server, f"answered HTTP {response.status_code} "
                                                               f"for blob {digest}", response.status_code)
        return int(response.headers.get("content-length") or 0)

    async def tags(self, upstream: Upstream, repository: str, creds: Credentials | None) -> list[str]:
        """Every tag of ``repository``, following the upstream's ``Link`` pagination.

        Only strings in the OCI tag grammar are kept (what reaches a client's tag list, a ``Link`` header or a
        manifest request is a tag); the rest are dropped, and how many is logged. A ``Link`` is followed only
        to the same tag-list URL (other query): the login must not go to another host or repository. All the
        pages together are bounded by the list-max-size setting and the upstream-deadline.
        """
        what = f"the tag list of {repository}"
        async with self._deadline(upstream, what):
            tags, dropped = await self._tags(upstream, repository, creds, what)
        if dropped:
            log.warning("upstream %s: dropped %d entr%s of the tag list of %s that %s not valid OCI tags",
                        upstream.login_server, dropped, "y" if dropped == 1 else "ies", repository,
                        "is" if dropped == 1 else "are")
        return tags

    async def _tags(self, upstream: Upstream, repository: str, creds: Credentials | None,
                    what: str) -> tuple[list[str], int]:
        first = httpx.URL(self._url(upstream, repository, "tags/list"))
        url: httpx.URL | None = first
        tags: list[str] = []
        dropped = total = 0
        for _ in range(1000):
            if url is None:
                break
            response, body = await self._request_body(upstream, repository, "GET", str(url), creds,
                                                      self.limits.list_bytes, LIST_MAX_SIZE_SETTING, what)
            total += len(body)
            if total > self.limits.list_bytes:  # a page at a time within it, and all of them too
                raise _too_large(upstream.login_server, f"{what} (all its pages together)", self.limits.list_bytes,
                                 LIST_MAX_SIZE_SETTING)
            if response.status_code == 404:
                raise UpstreamNotFound(upstream.login_server, f"has no repository {repository}", 404)
            if response.status_code != 200:
                raise UpstreamProtocolError(upstream.login_server, f"answered HTTP {response.status_code} "
                                                                   f"for the tag list", response.status_code)
            try:
                page = load_json(body)
            except ValueError:
                raise UpstreamProtocolError(upstream.login_server, "sent a tag list that is not JSON") from None
            listed = page.get("tags") if isinstance(page, dict) else None
            if not isinstance(listed, list | None):
                raise UpstreamProtocolError(upstream.login_server, "sent a tag list whose tags are not a list")
            kept = [tag for tag in listed or () if isinstance(tag, str) and is_tag(tag)]
            dropped += len(listed or ()) - len(kept)
            tags.extend(kept)
            url = self._next_page(upstream, first, response)
        return tags, dropped

    @staticmethod
    def _next_page(upstream: Upstream, first: httpx.URL, response: httpx.Response) -> httpx.URL | None:
        """The next page of a tag list from the ``Link`` header; refused unless it is the same list's URL."""
        next_link = response.links.get("next", {}).get("url")
        if not next_link:
            return None
        try:
            url = response.url.join(next_link)
        except httpx.InvalidURL:
            raise UpstreamProtocolError(upstream.login_server, "sent a tag-list Link that is not a URL") from None
        if (url.scheme, url.host, url.port, url.path) != (first.scheme, first.host, first.port, first.path):
            raise UpstreamProtocolError(upstream.login_server, "sent a tag-list Link to another URL than its "
                                                               "tag list; it was not followed")
        return url

    async def referrers(self, upstream: Upstream, repository: str, digest: str,
                        creds: Credentials | None) -> bytes | None:
        """The body of the upstream's referrers answer for ``digest``; None when it has no referrers API
        (it answers 404, as the spec says a registry without it does, or another client error)."""
        async with self._deadline(upstream, f"the referrers of {digest}"):
            response, body = await self._request_body(
                upstream, repository, "GET", self._url(upstream, repository, f"referrers/{digest}"), creds,
                self.limits.list_bytes, LIST_MAX_SIZE_SETTING, f"the referrers of {digest}",
                {"Accept": OCI_INDEX})
        return body if response.status_code == 200 else None
