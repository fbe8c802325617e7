"""The domain records an operator configures and the proxy reads: frozen dataclasses."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.text import check_printable


def utc_now() -> datetime:
    """Now, in UTC, to the second (what we store and show)."""
    return datetime.now(timezone.utc).replace(microsecond=0)


class AuthPolicy(str, enum.Enum):
    """Which pulls an upstream registry allows (the ACR "Support" column)."""

    ANONYMOUS = "anonymous"  # unauthenticated pulls only: a credential set is refused
    CREDENTIALS = "credentials"  # authenticated pulls only: a credential set is required
    BOTH = "both"

    @classmethod
    def parse(cls, value: str, field: str = "auth") -> AuthPolicy:
        """The policy named ``value`` (``anonymous``, ``credentials`` or ``both``), else a ValidationError."""
        try:
            return cls(check_printable(value, field, "the auth policy", max_length=64).strip().lower())
        except ValueError:
            raise ValidationError(f"auth policy {value!r} must be one of {', '.join(p.value for p in cls)}",
                                  field=field) from None

    @property
    def description(self) -> str:
        return {
            AuthPolicy.ANONYMOUS: "unauthenticated pulls only",
            AuthPolicy.CREDENTIALS: "authenticated pulls only",
            AuthPolicy.BOTH: "authenticated and unauthenticated pulls",
        }[self]


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream registry: built-in (the ACR catalogue) or added by the operator."""

    login_server: str
    base_url: str
    auth_policy: AuthPolicy
    builtin: bool = False
    title: str = ""
    #: the built-in base URL when an override replaced it, else ``None``
    default_url: str | None = None
    #: origins (``scheme://host:port``) besides its own that redirects and token realms may lead to even on a
    #: loopback, link-local or private address, and to which a token realm may receive the credential set
    #: (regcache.proxy.upstream.policy)
    allowed_origins: tuple[str, ...] = ()
    #: absolute path of a PEM file of CA certificates trusted for its own origin besides the operating
    #: system's trust store (regcache.proxy.upstream.tls), or ``None``
    ca_bundle: str | None = None

    @property
    def overridden(self) -> bool:
        return self.default_url is not None


@dataclass(frozen=True, slots=True)
class UpstreamOverride:
    """What an operator changed of a built-in upstream: its URL, and the allowances that go with that URL."""

    base_url: str
    allowed_origins: tuple[str, ...] = ()
    ca_bundle: str | None = None


#: the identity of pulls without a credential set (rate-limit budgets are kept per identity)
ANONYMOUS = "(anonymous)"


class HealthStatus(str, enum.Enum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class CredentialHealth:
    """The last health check of a credential set; never carries a secret value."""

    status: HealthStatus = HealthStatus.UNKNOWN
    error_code: str | None = None
    message: str | None = None
    checked_at: datetime | None = None

    @classmethod
    def healthy(cls) -> CredentialHealth:
        return cls(HealthStatus.HEALTHY, None, None, utc_now())

    @classmethod
    def unhealthy(cls, code: str, message: str) -> CredentialHealth:
        return cls(HealthStatus.UNHEALTHY, code, message, utc_now())


@dataclass(frozen=True, slots=True)
class CredentialSet:
    """An upstream login: the secret ids (URIs) of its username and password, never the values."""

    name: str
    login_server: str
    username_secret_id: str
    password_secret_id: str
    health: CredentialHealth = field(default_factory=CredentialHealth)
    created_at: datetime = field(default_factory=utc_now)


@dataclass(frozen=True, slots=True)
class UpstreamRepository:
    """A repository on an upstream registry, e.g. ``docker.io`` + ``library/ubuntu``."""

    login_server: str
    path: str

    def __str__(self) -> str:
        return f"{self.login_server}/{self.path}"


@dataclass(frozen=True, slots=True)
class CacheRule:
    """Maps a target repository (what clients pull) to a source repository upstream.

    Wildcard rules end both sides in ``/*`` (or are ``*`` on the target side):
    the part of the client's name under the target prefix replaces the source ``*``.
    """

    name: str
    source_repository: str
    target_repository: str
    credential_set: str | None = None
    created_at: datetime = field(default_factory=utc_now)
    #: seconds a cached tag is served without asking the upstream (None: the proxy's default, 0)
    freshness: float | None = None
    #: serve a cached tag when the upstream is unreachable, failing or rate-limiting
    serve_stale_on_error: bool = True
    #: serve a cached tag the upstream no longer has
    serve_stale_if_deleted: bool = False
    #: evict what this rule cached once it has not been pulled for this many seconds
    retention: float | None = None
    #: fetch new or moved tags matching this filter in the background ("semver:>=1.2,<2" or a regex)
    sync_tags: str | None = None
    #: seconds between tag syncs
    sync_interval: float | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.target_repository.endswith("*")

    @property
    def target_prefix(self) -> str:
        """``team`` for ``team/*``, ``""`` for ``*``; the whole target for a static rule."""
        return self.target_repository.removesuffix("*").removesuffix("/")

    @property
    def source_login_server(self) -> str:
        return self.source_repository.partition("/")[0]

    @property
    def source_path(self) -> str:
        """The upstream path (``library/ubuntu``); for a wildcard, the prefix before ``/*``."""
        path = self.source_repository.partition("/")[2]
        return path.removesuffix("*").removesuffix("/")


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """The rule that serves a client repository name, and where upstream it comes from."""

    rule: CacheRule
    upstream: UpstreamRepository
    #: the repository name as clients see it (the target side), under which it is cached
    repository: str


def source_of(upstream: UpstreamRepository, credential_set: CredentialSet | None) -> str:
    """The *source* a rule reads from: its upstream repository and the access used (docs/security.md).

    Tags, links and manifest media types belong to a source. The access is ``anonymous`` or the
    credential set's name with a fingerprint of its secret ids, so pointing a set at other secrets
    is a new access, which must establish again what the old one had.
    """
    if credential_set is None:
        return f"anonymous/{upstream}"
    ids = f"{credential_set.username_secret_id}\n{credential_set.password_secret_id}".encode()
    return f"credential-set/{credential_set.name}@{hashlib.sha256(ids).hexdigest()[:16]}/{upstream}"


#: the detail of a blob miss served from a download another request had started: its bytes were
#: fetched once, for that request, so statistics and metrics do not count them as fetched again
JOINED_DOWNLOAD = "joined a download already in progress"
#: the detail of a blob miss streamed from the fleet member that downloads it (docs/scale-out.md): fetched
#: from the upstream once, by that member
PEER_DOWNLOAD = "streamed from the fleet member that downloads it"
#: misses whose bytes this node did not fetch from an upstream
NOT_FETCHED_HERE = (JOINED_DOWNLOAD, PEER_DOWNLOAD)


@dataclass(frozen=True, slots=True)
class TagSyncRecord:
    """The last tag sync of one repository of a rule."""

    rule: str
    repository: str
    synced_at: datetime | None
    result: str  # "ok" or "error"
    fetched: int
    detail: str


@dataclass(frozen=True, slots=True)
class RateLimitRecord:
    """The last budget an upstream announced for one login (its ``ratelimit-*`` headers) and the 429s seen."""

    login_server: str
    identity: str  # a credential set's name, or ANONYMOUS
    limit: str | None
    remaining: str | None
    throttled: int
    updated_at: datetime | None


class Result(enum.StrEnum):
    """How a request was answered: from the cache, from the upstream, stale, or not at all."""

    HIT = "hit"
    MISS = "miss"
    STALE = "stale"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class PullEvent:
    """One manifest or blob request as the proxy answered it (the Activity log and statistics)."""

    client: str
    method: str
    kind: str  # "manifest", "blob", "tags"
    repository: str
    reference: str
    result: Result
    status: int
    rule: str | None = None
    bytes: int = 0
    duration_ms: float = 0.0
    detail: str | None = None
    ts: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    #: the client's User-Agent header, cut to USER_AGENT_MAX_CHARS (tells docker from podman, skopeo, ...)
    user_agent: str | None = None


#: at most this many characters of a client's User-Agent are recorded with its events
USER_AGENT_MAX_CHARS = 256
