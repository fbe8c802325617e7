"""The engine's exception tree, documented in one place.

    RegcacheError                  anything the engine refuses or cannot do; ``str()`` is one line
    ├── ValidationError            bad input; ``field`` names the form field it belongs beside
    │   ├── ConflictError          clashes with existing state (duplicate, overlap, in use)
    │   └── LimitError             a quota is reached (1,000 cache rules)
    ├── NotFoundError              a named rule, credential set or upstream does not exist
    ├── SecretError                a secret cannot be read or written; ``code`` is the health code
    │   └── KeyringUnavailableError  no usable keyring backend on this host
    ├── StateError                 the state directory or database cannot be used
    └── PullError                  why a client's pull cannot be served; ``detail`` is for the client
        ├── NameUnknown            no cache rule covers the name
        ├── ManifestUnknown        no such tag or manifest (upstream 404, or none the client accepts)
        ├── BlobUnknown            no such blob in this repository
        ├── UpstreamUnavailable    unreachable, timing out or failing, and nothing cached to serve
        │   └── UpstreamRateLimited  the upstream answered 429
        ├── UpstreamAuthFailed     the upstream refused the rule's credentials
        ├── UpstreamBadContent     the upstream sent bytes that fail their digest, or no answer we can use
        │   └── ManifestInvalid    a manifest that does not match its digest
        └── CacheUnavailable       the rule cannot be used now (its upstream or credential set is gone),
            │                      or the cache's own storage failed
            └── StorageFull        the cache's disk is full

Messages say what happened and what to do, and never contain a secret value. The engine knows no
HTTP status: only the HTTP layer (``regcache.proxy.http.errors``) maps a PullError to an OCI error.
"""

from __future__ import annotations


class RegcacheError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ValidationError(RegcacheError):
    """Input refused; ``field`` is the input it concerns (``name``, ``source``, ...)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConflictError(ValidationError):
    """Input that clashes with what is already configured."""


class LimitError(ValidationError):
    """A configured quota is reached."""


class NotFoundError(RegcacheError):
    """A named object does not exist."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SecretError(RegcacheError):
    """A secret could not be read or stored; ``code`` is the credential-health error code."""

    def __init__(self, message: str, code: str = "SecretNotFound") -> None:
        super().__init__(message)
        self.code = code


class KeyringUnavailableError(SecretError):
    """No usable keyring backend: say so and name the ways out."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="KeyringUnavailable")


class StateError(RegcacheError):
    """The state directory or its database cannot be used."""


class PullError(RegcacheError):
    """A pull that cannot be served; the HTTP layer answers it as OCI error JSON."""

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.detail = detail


class NameUnknown(PullError):
    """No cache rule covers the repository name."""


class ManifestUnknown(PullError):
    """The tag or manifest is unknown (or none the client accepts)."""


class BlobUnknown(PullError):
    """The blob is not in this repository."""


class UpstreamUnavailable(PullError):
    """The upstream is unreachable, timing out or failing, and nothing cached can be served instead."""


class UpstreamRateLimited(UpstreamUnavailable):
    """The upstream answered 429 Too Many Requests."""


class UpstreamAuthFailed(PullError):
    """The upstream refused the rule's credentials (or an anonymous pull)."""


class UpstreamBadContent(PullError):
    """The upstream's answer cannot be used: bytes that fail their digest, a transfer that broke."""


class ManifestInvalid(UpstreamBadContent):
    """A manifest from the upstream does not match its digest."""


class CacheUnavailable(PullError):
    """The rule cannot be used now (its upstream or credential set is gone), or the cache's storage failed."""


class StorageFull(CacheUnavailable):
    """The cache's own disk is full."""


def unwrap_error(exc: BaseException, types: tuple[type[BaseException], ...] = (RegcacheError,)) -> BaseException:
    """The first error of ``types`` inside (nested) exception groups from task groups, else ``exc``."""
    wanted: tuple[type[BaseException], ...] = (*types, BaseExceptionGroup)
    while isinstance(exc, BaseExceptionGroup):
        found = next((e for e in exc.exceptions if isinstance(e, wanted)), None)
        if found is None:
            return exc
        exc = found
    return exc
