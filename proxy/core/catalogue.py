"""The upstream catalogue: ACR's supported registries, plus custom upstreams and URL overrides."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from urllib.parse import SplitResult, urlsplit

from regcache.proxy.core.errors import NotFoundError, ValidationError
from regcache.proxy.core.models import AuthPolicy, Upstream, UpstreamOverride
from regcache.proxy.core.references import is_login_server
from regcache.proxy.core.text import check_printable

DOCKER_HUB = "docker.io"

#: The "Source" drop-down: login server -> built-in entry (DESIGN 1).
#:
#: Token services (the ``realm`` of their Bearer challenges): Docker Hub's is https://auth.docker.io, another
#: origin, allowed here; ghcr.io (/token), quay.io (/v2/auth), gcr.io (/v2/token) and public.ecr.aws (/token/)
#: answer on their own origin; mcr.microsoft.com is anonymous. Blob redirects (Docker Hub's and MCR's CDNs,
#: registry.k8s.io's regional mirrors) go to public addresses and are followed without credentials.
BUILTIN_UPSTREAMS: Mapping[str, Upstream] = {
    u.login_server: u
    for u in (
        Upstream(DOCKER_HUB, "https://registry-1.docker.io", AuthPolicy.CREDENTIALS, True, "Docker Hub",
                 allowed_origins=("https://auth.docker.io:443",)),
        Upstream("mcr.microsoft.com", "https://mcr.microsoft.com", AuthPolicy.ANONYMOUS, True,
                 "Microsoft Artifact Registry"),
        Upstream("public.ecr.aws", "https://public.ecr.aws", AuthPolicy.ANONYMOUS, True,
                 "AWS ECR Public Gallery"),
        Upstream("ghcr.io", "https://ghcr.io", AuthPolicy.BOTH, True, "GitHub Container Registry"),
        Upstream("quay.io", "https://quay.io", AuthPolicy.BOTH, True, "Quay"),
        Upstream("registry.k8s.io", "https://registry.k8s.io", AuthPolicy.BOTH, True, "Kubernetes"),
        Upstream("gcr.io", "https://gcr.io", AuthPolicy.BOTH, True, "Google Container Registry"),
    )
}


def normalize_login_server(server: str) -> str:
    """Lower-case a login server and refuse anything that is not ``host[:port]``."""
    server = check_printable(server, "login_server", "the login server").strip().lower()
    if not is_login_server(server):
        raise ValidationError(
            f"login server {server!r} is not a host name with an optional port (e.g. ghcr.io, 127.0.0.1:5001)",
            field="login_server",
        )
    return server


def normalize_base_url(url: str) -> str:
    """An upstream API base URL: https unless ``http://`` is written out; no path, query or fragment."""
    raw = check_printable(url, "url", "the URL").strip()
    if any(c.isspace() for c in raw):
        raise ValidationError(f"URL {url!r} contains a space; give a registry root such as https://host:port",
                              field="url")
    if "://" not in raw:
        raw = "https://" + raw
    try:
        parts = urlsplit(raw)
    except ValueError:  # e.g. a '[' that does not open an IPv6 address
        raise ValidationError(f"URL {url!r} is not a valid URL; give a registry root such as https://host:port "
                              f"(an IPv6 address in brackets: https://[::1]:5000)", field="url") from None
    if parts.scheme not in ("https", "http"):
        raise ValidationError(f"URL {url!r} must use https:// (or http:// when asked for explicitly)", field="url")
    if not parts.hostname:
        raise ValidationError(f"URL {url!r} has no host", field="url")
    if parts.username or parts.password:
        raise ValidationError(
            "the URL must not carry a username or password; attach a credential set to the rule instead",
            field="url",
        )
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValidationError(f"URL {url!r} must be a registry root such as https://host:port, without a path",
                              field="url")
    try:
        port = parts.port
    except ValueError:
        raise ValidationError(f"URL {url!r} has an invalid port", field="url") from None
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None:
        netloc += f":{port}"
    if not is_login_server(netloc):
        raise ValidationError(f"URL {url!r} does not name a host (letters, digits, '-' and '.', an IPv4 address "
                              f"or an IPv6 address in brackets)", field="url")
    return f"{parts.scheme}://{netloc}"


#: at most this many allowed origins per upstream (each is a hole in the outbound policy: keep them few)
MAX_ALLOWED_ORIGINS = 16
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(parts: SplitResult, what: str, field: str) -> str:
    """``scheme://host:port`` of split URL ``parts``: lower case, the port written out, IPv6 in brackets."""
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValidationError(f"{what} must start with https:// or http://", field=field)
    host = parts.hostname
    if not host:
        raise ValidationError(f"{what} has no host", field=field)
    try:
        port = parts.port
    except ValueError:
        raise ValidationError(f"{what} has an invalid port", field=field) from None
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValidationError(f"{what} has an invalid host name", field=field) from None
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port or _DEFAULT_PORTS[parts.scheme]}"


def origin_of(url: str) -> str:
    """The origin of any http(s) URL (its path and query ignored), in the form :func:`normalize_origin` gives."""
    return _origin(urlsplit(url.strip()), f"URL {url!r}", "url")


def normalize_origin(value: str) -> str:
    """An origin an operator allows for an upstream: ``scheme://host[:port]`` and nothing else."""
    raw = value.strip()
    what = f"origin {value!r}"
    if "://" not in raw:
        raise ValidationError(f"{what} must be written scheme://host[:port], e.g. https://auth.example.com",
                              field="allow_origin")
    parts = urlsplit(raw)
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValidationError(f"{what} must be scheme://host[:port] only: no path, query or login",
                              field="allow_origin")
    return _origin(parts, what, "allow_origin")


def normalize_allowed_origins(values: Sequence[str], base_url: str) -> tuple[str, ...]:
    """The allowed origins of an upstream at ``base_url``: normalized, without duplicates or its own origin.

    An ``http://`` origin is refused for an ``https://`` upstream: regcache never goes from https to http.
    """
    own = origin_of(base_url)
    origins: list[str] = []
    for value in values:
        origin = normalize_origin(value)
        if origin.startswith("http://") and own.startswith("https://"):
            raise ValidationError(f"origin {origin} is plain http but the upstream is {base_url}; regcache never "
                                  f"follows https to http, so it could not be used", field="allow_origin")
        if origin != own and origin not in origins:
            origins.append(origin)
    if len(origins) > MAX_ALLOWED_ORIGINS:
        raise ValidationError(f"at most {MAX_ALLOWED_ORIGINS} allowed origins per upstream", field="allow_origin")
    return tuple(origins)


def check_ca_bundle_path(value: str) -> str:
    """The path of a CA bundle as an operator gave it: plain text, not blank (the file is read in config/)."""
    path = check_printable(value, "ca_bundle", "the CA bundle path").strip()
    if not path:
        raise ValidationError("the CA bundle path is empty; give the path of a PEM file of CA certificates",
                              field="ca_bundle")
    return path


class UpstreamCatalogue:
    """Every upstream regcache knows: built-ins (possibly with an overridden URL) and custom ones.

    ``overrides`` maps a built-in login server to its URL, allowed origins and CA bundle; an override's
    allowances replace the built-in's (its known realm hosts belong to the built-in URL, not to one pointed
    elsewhere).
    """

    def __init__(self, custom: Iterable[Upstream] = (),
                 overrides: Mapping[str, UpstreamOverride] | None = None) -> None:
        entries: dict[str, Upstream] = {}
        overrides = overrides or {}
        for server, builtin in BUILTIN_UPSTREAMS.items():
            if server in overrides:
                o = overrides[server]
                builtin = replace(builtin, base_url=o.base_url, default_url=builtin.base_url,
                                  allowed_origins=o.allowed_origins, ca_bundle=o.ca_bundle)
            entries[server] = builtin
        for upstream in custom:
            entries[upstream.login_server] = upstream
        self._entries = entries

    def __contains__(self, login_server: object) -> bool:
        return login_server in self._entries

    def __iter__(self) -> Iterator[Upstream]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, login_server: str) -> Upstream:
        """The upstream for ``login_server``, or a NotFoundError that lists the known ones."""
        try:
            return self._entries[login_server]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise NotFoundError(
                f"unknown login server {login_server!r}; known: {known} "
                f"(add one with `regcache upstream add --login-server HOST --url URL`)",
                field="source",
            ) from None


def normalize_repository_path(login_server: str, path: str) -> str:
    """Docker Hub's one-component names live under ``library/`` (``ubuntu`` = ``library/ubuntu``)."""
    if login_server == DOCKER_HUB and path and "/" not in path and path != "*":
        return f"library/{path}"
    return path
