"""The outbound policy: where an upstream's redirects and token realms may lead, and what goes with them.

Every URL regcache is sent to by an upstream (a redirect, a ``Link`` to the next page, a Bearer realm) is
one of two kinds:

* **trusted**: the upstream URL's own origin (scheme, host, port), or an origin the operator allowed for
  this upstream (``Upstream.allowed_origins``, ``regcache upstream add ... --allow-origin ORIGIN``). It is
  reached like the upstream itself, whatever its address.
* **public**: any other origin. It is reached through a connection pool of its own whose network backend
  (:class:`PublicAddressBackend`) resolves the host name once, refuses it when any of its addresses is
  loopback, link-local, private or otherwise not globally routable, and connects to exactly the address it
  checked, so a DNS answer that changes between the check and the connection (rebinding) cannot lead it
  inside. A refused target is never connected to.

Besides: https never leads to http (a redirect hop, a realm of an https upstream); ``Authorization`` is sent
only to the upstream's own origin (the client strips it from every other hop); and the credential set goes
to a token realm only when the realm is trusted. A realm that is public but not allowed gets an anonymous
token request when the pull is anonymous, and is refused when the pull needs the credential set: sending it
anywhere else would leak it, and asking anonymously instead would silently pull with another access.

Connections to public origins do not go through ``HTTP(S)_PROXY`` from the environment: the address check
needs the connection to be regcache's own.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable

import anyio
import httpcore
import httpx

from regcache.proxy.core.catalogue import origin_of
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import Upstream

#: resolves (host, port) to the addresses to connect to, in order
Resolver = Callable[[str, int], Awaitable[list[str]]]


class OutboundRefused(Exception):
    """A redirect target or token realm the policy refuses; names its origin and why (never a path or query).

    ``allowable``: whether an operator could allow the origin for the upstream (a downgrade never is).
    """

    def __init__(self, origin: str, reason: str, allowable: bool = True) -> None:
        super().__init__(f"{origin}: {reason}")
        self.origin = origin
        self.reason = reason
        self.allowable = allowable


class Route(enum.Enum):
    """How a target is reached: like the upstream itself, or through the public-addresses-only pool."""

    TRUSTED = "trusted"
    PUBLIC = "public"


def origin(url: httpx.URL | str) -> str:
    """``scheme://host:port`` of ``url``; OutboundRefused for anything but an absolute http(s) URL."""
    try:
        return origin_of(str(url))
    except ValidationError:
        raise OutboundRefused(redact_url(url), "is not an absolute http:// or https:// URL",
                              allowable=False) from None


def redact_url(url: httpx.URL | str) -> str:
    """``url`` without its query string (presigned URLs carry their signature there) or login."""
    text = str(url)
    head, sep, _ = text.partition("?")
    scheme, found, rest = head.partition("://")
    if found and "@" in rest.split("/", 1)[0]:
        head = f"{scheme}://{rest.split('@', 1)[1]}"
    return head + ("?<redacted>" if sep else "")


def _downgrade(previous: httpx.URL | str, target: httpx.URL | str) -> None:
    if httpx.URL(str(previous)).scheme == "https" and httpx.URL(str(target)).scheme == "http":
        raise OutboundRefused(origin(target), "is plain http after https (a downgrade regcache never follows)",
                              allowable=False)


def route(upstream: Upstream, previous: httpx.URL | str, target: httpx.URL | str) -> Route:
    """How to reach ``target``, which ``previous`` (the upstream URL, or the last hop) led to."""
    wanted = origin(target)
    _downgrade(previous, target)
    if wanted == origin(upstream.base_url) or wanted in upstream.allowed_origins:
        return Route.TRUSTED
    return Route.PUBLIC


def realm_route(upstream: Upstream, realm: httpx.URL | str, with_credentials: bool) -> Route:
    """How to reach a Bearer ``realm``; OutboundRefused when the credential set would go where it may not."""
    wanted = origin(realm)
    found = route(upstream, upstream.base_url, realm)
    if found is Route.PUBLIC and with_credentials:
        raise OutboundRefused(wanted, "is neither the upstream's own origin nor allowed for it, so the credential "
                                      "set is not sent to it")
    return found


def is_own_origin(upstream: Upstream, url: httpx.URL | str) -> bool:
    """Whether ``url`` has the upstream URL's origin: the only one ``Authorization`` is ever sent to."""
    try:
        return origin(url) == origin(upstream.base_url)
    except OutboundRefused:
        return False


def address_problem(address: str) -> str | None:
    """What makes ``address`` no place for a public target (e.g. "a loopback address"), or None if it is global."""
    ip = ipaddress.ip_address(address.partition("%")[0])  # an IPv6 zone id ("fe80::1%eth0") is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or not ip.is_global:
        return "an address that is not publicly routable"
    return None


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host``, in the order the system resolver gives them, without duplicates."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for *_, sockaddr in infos:
        if str(sockaddr[0]) not in addresses:
            addresses.append(str(sockaddr[0]))
    return addresses


class PublicAddressBackend(httpcore.AsyncNetworkBackend):
    """Connects only to global addresses: resolves once, checks every address, connects to a checked one."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None, resolver: Resolver = resolve) -> None:
        self._inner = inner or httpcore.AnyIOBackend()
        self._resolve = resolver

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            problem = address_problem(address)
            if problem is not None:  # the caller knows the whole origin; this names the host and its address
                raise OutboundRefused(host, f"is {problem}" if host == address else
                                      f"resolves to {problem} ({address})")
        failure: Exception | None = None
        for address in addresses:  # exactly the addresses checked above: no second lookup
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused(path, "is a unix socket", allowable=False)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class PublicOnlyTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose every connection is made by :class:`PublicAddressBackend`.

    Pooled connections are reused per origin, and each was made to a checked address, so no request through
    this transport reaches a non-public address. (``_pool`` is what httpx's transport sends through;
    tests/proxy/test_outbound_policy.py checks that a loopback target through this transport is refused.)
    ``ssl_context`` is the trust its https connections verify against: the upstream client gives the operating
    system's store, never an upstream's CA bundle.
    """

    def __init__(self, limits: httpx.Limits, backend: httpcore.AsyncNetworkBackend | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=backend or PublicAddressBackend())
