"""Settings: the storage backend, the cache-wide setting keys, and the operations settings of cache rules.

Storage is where verified blobs and manifests live.
``filesystem`` (the default) keeps them under the state directory. ``s3`` keeps them in a bucket of an
S3-compatible object store that several regcache nodes share (docs/scale-out.md): the setting holds
the endpoint, bucket, region, addressing style and the *ids* of the two secrets (``keyring://`` or
``env://``); the access key and secret key themselves never enter the state database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from regcache.proxy.core.errors import RegcacheError, ValidationError
from regcache.proxy.core.secret_ids import SecretId
from regcache.proxy.core.text import check_printable
from regcache.proxy.core.units import parse_duration

#: the cache size limit (`regcache config set max-size 50GiB`)
MAX_SIZE_SETTING = "max-size"
#: bounds on what an upstream may send (docs: README, "Limits")
MANIFEST_MAX_SIZE_SETTING = "manifest-max-size"
LIST_MAX_SIZE_SETTING = "list-max-size"
TOKEN_MAX_SIZE_SETTING = "token-max-size"
UPSTREAM_DEADLINE_SETTING = "upstream-deadline"
BLOB_MAX_SIZE_SETTING = "blob-max-size"
BLOB_MIN_RATE_SETTING = "blob-min-rate"
BLOB_RATE_WINDOW_SETTING = "blob-rate-window"
TOKEN_MAX_LIFETIME_SETTING = "token-max-lifetime"
#: the largest CA bundle file an upstream may name (`upstream add --ca-bundle`)
CA_BUNDLE_MAX_SIZE_SETTING = "ca-bundle-max-size"
UPSTREAM_LIMIT_SETTINGS = (MANIFEST_MAX_SIZE_SETTING, LIST_MAX_SIZE_SETTING, TOKEN_MAX_SIZE_SETTING,
                           UPSTREAM_DEADLINE_SETTING, BLOB_MAX_SIZE_SETTING, BLOB_MIN_RATE_SETTING,
                           BLOB_RATE_WINDOW_SETTING, TOKEN_MAX_LIFETIME_SETTING, CA_BUNDLE_MAX_SIZE_SETTING)
#: a fleet of nodes on one bucket (docs/scale-out.md, "A fleet"): the URL the other members reach this node's
#: peer endpoint at, and the id of the secret every member signs its peer requests with
FLEET_ADDRESS_SETTING = "fleet-address"
FLEET_SECRET_SETTING = "fleet-secret"
#: the PEM file of the CA that issued the fleet's node certificates: a node serving TLS (``serve --tls-cert``)
#: checks its peers' certificates against it alone (unset: against the operating system's trust store)
FLEET_CA_SETTING = "fleet-ca"
#: this node's id in the fleet, made at its first start (not an operator's setting)
FLEET_NODE_ID_SETTING = "fleet-node-id"
#: the largest rules file `regcache rules apply` reads (docs: README, "Limits")
RULES_FILE_MAX_SIZE_SETTING = "rules-file-max-size"
DEFAULT_RULES_FILE_MAX_SIZE = 1024 * 1024
#: the largest file a ``file://`` secret id may name (docs: README, "Limits"); a larger one is refused unread
SECRET_FILE_MAX_SIZE_SETTING = "secret-file-max-size"
DEFAULT_SECRET_FILE_MAX_SIZE = 64 * 1024
#: the most ``secret-file-max-size`` may be raised to: a secret is a password, a token or a key, never a payload
SECRET_FILE_MAX_SIZE_LIMIT = 1024 * 1024
#: the size at which `regcache.log` (the TUI's, or `serve --log-file`) is rotated (docs: README, "Limits")
LOG_MAX_SIZE_SETTING = "log-max-size"
DEFAULT_LOG_MAX_SIZE = 10 * 1024 * 1024
#: the smallest log-max-size: a log rotated every few lines keeps nothing worth reading
MIN_LOG_MAX_SIZE = 64 * 1024
#: rotated logs kept beside the current one (regcache.log.1 ... .3): at most 4 x log-max-size on disk
LOG_BACKUPS = 3


def log_max_size(raw: str | None) -> int:
    """The log-max-size from its stored value (absent: the default; never below the minimum)."""
    return max(int(float(raw)), MIN_LOG_MAX_SIZE) if raw else DEFAULT_LOG_MAX_SIZE


def _stored_number(values: Mapping[str, str | None]) -> Callable[[str, float], float]:
    """``number(key, fallback)``: a setting's stored number, or the fallback when it was never set."""
    def number(key: str, fallback: float) -> float:
        raw = values.get(key)
        return float(raw) if raw else fallback
    return number


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """What one upstream answer may cost: bytes per kind of body, and time per call (blobs excepted)."""

    #: a manifest or index (the distribution registry's own limit is 4 MiB)
    manifest_bytes: int = 4 * 1024 * 1024
    #: one page of a tag list, or a referrers index
    list_bytes: int = 8 * 1024 * 1024
    #: a token service's answer
    token_bytes: int = 256 * 1024
    #: seconds for a whole manifest, tag-list, referrers or token call, however the upstream drips it
    deadline: float = 60.0
    #: one blob (an announced Content-Length above it is refused before a byte is written)
    blob_bytes: int = 32 * 1024 * 1024 * 1024
    #: a blob download must move at least this many bytes per second, averaged over ``blob_rate_window``
    #: seconds (a deadline would cut a big layer on a slow link; a rate only cuts a stalled or dripping one)
    blob_min_rate: int = 16 * 1024
    blob_rate_window: float = 60.0
    #: seconds a token service's token is reused at most, whatever ``expires_in`` it claims (NaN, inf, 10**400)
    token_lifetime: float = 86400.0
    #: a CA bundle file (a distribution's whole system bundle is about 220 KiB)
    ca_bundle_bytes: int = 1024 * 1024

    @classmethod
    def from_settings(cls, values: Mapping[str, str | None]) -> UpstreamLimits:
        """The limits from stored setting values (absent: the default)."""
        default = cls()
        number = _stored_number(values)
        return cls(int(number(MANIFEST_MAX_SIZE_SETTING, default.manifest_bytes)),
                   int(number(LIST_MAX_SIZE_SETTING, default.list_bytes)),
                   int(number(TOKEN_MAX_SIZE_SETTING, default.token_bytes)),
                   number(UPSTREAM_DEADLINE_SETTING, default.deadline),
                   int(number(BLOB_MAX_SIZE_SETTING, default.blob_bytes)),
                   int(number(BLOB_MIN_RATE_SETTING, default.blob_min_rate)),
                   number(BLOB_RATE_WINDOW_SETTING, default.blob_rate_window),
                   number(TOKEN_MAX_LIFETIME_SETTING, default.token_lifetime),
                   int(number(CA_BUNDLE_MAX_SIZE_SETTING, default.ca_bundle_bytes)))


#: how long and how many pull events are kept (docs: README, "Limits"); their counts survive as roll-ups
EVENTS_MAX_AGE_SETTING = "events-max-age"
EVENTS_MAX_COUNT_SETTING = "events-max-count"
EVENT_LIMIT_SETTINGS = (EVENTS_MAX_AGE_SETTING, EVENTS_MAX_COUNT_SETTING)


@dataclass(frozen=True, slots=True)
class EventLimits:
    """How many pull events the state database keeps, and for how long (the Activity log's history)."""

    #: seconds an event is kept
    max_age: float = 30 * 86400.0
    #: events kept at most (about 300 MiB of database at the default)
    max_count: int = 1_000_000

    @classmethod
    def from_settings(cls, values: Mapping[str, str | None]) -> EventLimits:
        """The limits from stored setting values (absent: the default)."""
        age, count = values.get(EVENTS_MAX_AGE_SETTING), values.get(EVENTS_MAX_COUNT_SETTING)
        default = cls()
        return cls(float(age) if age else default.max_age, int(float(count)) if count else default.max_count)


def parse_count(text: str, field: str | None = None) -> int:
    """A whole number of things, at least 1: ``1000000``, ``1_000_000`` or ``1,000,000``."""
    digits = text.strip().replace("_", "").replace(",", "")
    if not digits.isascii() or not digits.isdigit() or int(digits) < 1:
        raise ValidationError(f"{text!r} must be a whole number of at least 1, e.g. 1000000", field=field)
    return int(digits)

#: bounds on what a client may hold (docs: README, "Limits on what a client may do")
HEADER_TIMEOUT_SETTING = "header-timeout"
KEEPALIVE_TIMEOUT_SETTING = "keepalive-timeout"
MAX_CONNECTIONS_SETTING = "max-connections"
ALLOWED_HOSTS_SETTING = "allowed-hosts"
LOGIN_QUEUE_SETTING = "login-queue"
LOGIN_BACKOFF_SETTING = "login-backoff"
SERVER_LIMIT_SETTINGS = (HEADER_TIMEOUT_SETTING, KEEPALIVE_TIMEOUT_SETTING, MAX_CONNECTIONS_SETTING,
                         ALLOWED_HOSTS_SETTING, LOGIN_QUEUE_SETTING, LOGIN_BACKOFF_SETTING)

#: a host name as a Host header carries it (without the port): DNS labels, or an IPv6 literal in brackets
_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?"
                        r"|\[[0-9a-f:.]{2,45}\]")


def parse_host_names(text: str, field: str | None = None) -> tuple[str, ...]:
    """``nginx.example, cache.lan`` as lower-case host names (no port, no scheme); empty for ``""``."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if not _HOST_NAME.fullmatch(name):
            raise ValidationError(f"host name {name[:100]!r} is not valid: give names as a Host header carries them, "
                                  f"without scheme or port, separated by commas (e.g. cache.example.com,[fd00::1])",
                                  field=field)
        if name.rstrip(".") not in names:
            names.append(name.rstrip("."))
    return tuple(names)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may hold of the server: time to send a request head, idle time, connections, logins."""

    #: seconds for a request line and headers to arrive, from the connection's start or the previous response
    header_timeout: float = 10.0
    #: seconds a kept-alive connection may stay idle between requests
    keepalive_timeout: float = 5.0
    #: connections at once (also bounded by the open-files limit); over it, those still reading a head are shed
    max_connections: int = 1024
    #: Host names a loopback listener answers besides localhost, 127.0.0.1 and [::1]
    allowed_hosts: tuple[str, ...] = ()
    #: password verifications that may wait for one of the running ones (a full queue answers 429)
    login_queue: int = 32
    #: the longest a client address is refused after failed logins (0: no back-off)
    login_backoff: float = 60.0

    @classmethod
    def from_settings(cls, values: Mapping[str, str | None]) -> ServerLimits:
        """The limits from stored setting values (absent: the default)."""
        default = cls()
        number = _stored_number(values)
        return cls(number(HEADER_TIMEOUT_SETTING, default.header_timeout),
                   number(KEEPALIVE_TIMEOUT_SETTING, default.keepalive_timeout),
                   int(number(MAX_CONNECTIONS_SETTING, default.max_connections)),
                   parse_host_names(values.get(ALLOWED_HOSTS_SETTING) or ""),
                   int(number(LOGIN_QUEUE_SETTING, default.login_queue)),
                   number(LOGIN_BACKOFF_SETTING, default.login_backoff))



STORAGE_SETTING = "storage"
FILESYSTEM = "filesystem"
S3 = "s3"
DEFAULT_REGION = "us-east-1"
DEFAULT_PREFIX = "regcache"

# S3 bucket naming rules: 3-63 characters, lower case letters, digits, dots and hyphens
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


class StorageError(RegcacheError):
    """The configured object store cannot be used (unreachable, wrong credentials, no such bucket)."""


@dataclass(frozen=True, slots=True)
class S3Storage:
    """An S3-compatible bucket shared by regcache nodes; secrets by id only."""

    endpoint: str
    bucket: str
    access_key_id: str  # secret id of the access key id
    secret_access_key: str  # secret id of the secret access key
    region: str = DEFAULT_REGION
    path_style: bool = True
    prefix: str = DEFAULT_PREFIX

    @property
    def kind(self) -> str:
        return S3

    def describe(self) -> str:
        """One line for people: where the blobs are (no secret, not even an id)."""
        return f"s3 bucket {self.bucket} at {self.endpoint} (prefix {self.prefix}/)"

    def to_json(self) -> dict[str, object]:
        return {"kind": S3, **asdict(self)}


@dataclass(frozen=True, slots=True)
class FilesystemStorage:
    """Blobs under the state directory (the default)."""

    @property
    def kind(self) -> str:
        return FILESYSTEM

    def describe(self) -> str:
        return "filesystem (blobs under the state directory)"

    def to_json(self) -> dict[str, object]:
        return {"kind": FILESYSTEM}


StorageConfig = FilesystemStorage | S3Storage


def check_endpoint(value: str) -> str:
    """An object store's URL: http(s), a host, no credentials, query or fragment."""
    value = check_printable(value, "endpoint", "the endpoint").strip().rstrip("/")
    if any(c.isspace() for c in value):
        raise ValidationError(f"endpoint {value!r} contains a space", field="endpoint")
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. a '[' that does not open an IPv6 address
        raise ValidationError(f"endpoint {value!r} is not a valid URL, e.g. https://s3.example.com",
                              field="endpoint") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"endpoint {value!r} must be an http:// or https:// URL, e.g. https://s3.example.com",
                              field="endpoint")
    if parts.username or parts.password:
        raise ValidationError("the endpoint must not contain credentials: give them as secret ids",
                              field="endpoint")
    if parts.query or parts.fragment:
        raise ValidationError(f"endpoint {value!r} must not have a query or fragment", field="endpoint")
    try:
        _ = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ValidationError(f"endpoint {value!r} has an invalid port", field="endpoint") from None
    return value


def make_s3_storage(endpoint: str, bucket: str, access_key_id: str, secret_access_key: str,
                    region: str | None = None, path_style: bool = True, prefix: str | None = None) -> S3Storage:
    """A validated :class:`S3Storage`; raises ValidationError naming the field at fault."""
    for field, value in (("bucket", bucket), ("region", region), ("prefix", prefix)):
        if value is not None:
            check_printable(value, field, f"the {field}")
    bucket = bucket.strip()
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ValidationError(f"bucket name {bucket!r} is not valid: 3-63 lower-case letters, digits, dots and "
                              f"hyphens, starting and ending with a letter or digit", field="bucket")
    region = (region or DEFAULT_REGION).strip()
    if not _REGION_RE.fullmatch(region):
        raise ValidationError(f"region {region!r} is not valid, e.g. us-east-1", field="region")
    prefix = (prefix or DEFAULT_PREFIX).strip().strip("/")
    if not _PREFIX_RE.fullmatch(prefix) or any(part in (".", "..") for part in prefix.split("/")):
        raise ValidationError(f"prefix {prefix!r} must be path segments of letters, digits, '.', '_' and '-'",
                              field="prefix")
    return S3Storage(
        endpoint=check_endpoint(endpoint), bucket=bucket,
        access_key_id=str(SecretId.parse(access_key_id, field="access_key_id")),
        secret_access_key=str(SecretId.parse(secret_access_key, field="secret_access_key")),
        region=region, path_style=path_style, prefix=prefix)


def storage_from_json(text: str | None) -> StorageConfig:
    """The stored setting (None: never set) as a config object."""
    if not text:
        return FilesystemStorage()
    data = json.loads(text)
    if data.get("kind") == S3:
        return S3Storage(endpoint=data["endpoint"], bucket=data["bucket"], access_key_id=data["access_key_id"],
                         secret_access_key=data["secret_access_key"], region=data.get("region", DEFAULT_REGION),
                         path_style=bool(data.get("path_style", True)), prefix=data.get("prefix", DEFAULT_PREFIX))
    return FilesystemStorage()


def storage_to_json(config: StorageConfig) -> str:
    return json.dumps(config.to_json(), sort_keys=True)


# -- cache-rule settings (beyond ACR) ---------------------------------------------------------------

#: the operations settings of a cache rule, as ControlPlane.update_rule takes them
RULE_SETTINGS = ("freshness", "retention", "serve_stale_on_error", "serve_stale_if_deleted", "sync_tags",
                 "sync_interval")
#: what clears a setting that can be off (retention, tag sync, sync interval)
_OFF = ("", "none", "off")


def parse_rule_settings(given: Mapping[str, object]) -> dict[str, Any]:
    """The rule settings an operator gave (CLI options, form fields, a rules file), parsed; keys left out
    are not in the result. One grammar for every face: durations as ``10m`` or ``30d``; an empty value,
    ``none`` or ``off`` turns retention, tag sync and the sync interval off (and an empty freshness is 0).
    """
    unknown = set(given) - set(RULE_SETTINGS)
    if unknown:
        raise ValidationError(f"unknown cache-rule settings: {', '.join(sorted(unknown))}")
    settings: dict[str, Any] = {}
    for key, value in given.items():
        if key in ("serve_stale_on_error", "serve_stale_if_deleted"):
            if not isinstance(value, bool):
                raise ValidationError(f"{key} must be true or false, not {value!r}", field=key)
            settings[key] = value
            continue
        text = "" if value is None else str(value).strip()
        if key == "freshness":
            settings[key] = parse_duration(text, key) if text else 0.0
        elif text.lower() in _OFF:
            settings[key] = None
        elif key == "sync_tags":
            settings[key] = text  # checked as a tag filter with the whole rule (check_settings)
        else:
            settings[key] = parse_duration(text, key)
    return settings
