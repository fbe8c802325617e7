"""Client tokens: repository-scoped logins for pulling through regcache (ACR's tokens and scope maps).

A token has a name (the login user name), the repository patterns it may pull (the cache-rule
target grammar: ``ubuntu``, ``team/*``, ``*``), an optional expiry, and a password: generated once
and shown once, or given by the operator (the same token on every node behind a load balancer) and
checked by :func:`check_password`. Only a salted scrypt hash of the password is stored; verification
recomputes it and compares in constant time. Everything here is pure: no I/O, no event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import utc_now
from regcache.proxy.core.rules import parse_repository  # the target grammar, with our own wording in its errors
from regcache.proxy.core.text import check_printable
from regcache.proxy.core.units import parse_duration

#: bytes of randomness in a generated password (43 URL-safe base64 characters, no ':')
PASSWORD_BYTES = 32
#: the shortest password an operator may give (the password is all that guards the cache)
MIN_PASSWORD_LENGTH = 16
#: the longest (UTF-8 bytes): longer ones would not fit the Authorization header the proxy reads
MAX_PASSWORD_BYTES = 1024
#: scrypt cost: 16 MiB and about 50 ms per verification (verifications are cached by the proxy)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def generate_password() -> str:
    """A new random password (256 bits)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def check_password(password: str) -> str:
    """A password the operator gave, refused unless it is long enough to guard the cache on its own.

    Messages describe the problem, never the password itself.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(f"the password has {len(password)} characters; a token's password needs at least "
                              f"{MIN_PASSWORD_LENGTH}, as it is the only thing between the network and the cache "
                              f"(e.g. `openssl rand -base64 32`)", field="password")
    if password != password.strip():
        raise ValidationError("the password starts or ends with whitespace (a space, tab or extra line break); "
                              "remove it (only one trailing line break is dropped from stdin)", field="password")
    if not password.isprintable():
        raise ValidationError("the password contains a line break, tab or other unprintable character; give a "
                              "single line (a multi-line secret? pass only its first line, e.g. `head -n 1`)",
                              field="password")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise ValidationError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes (UTF-8); clients could not "
                              f"send it in an Authorization header the proxy accepts", field="password")
    return password


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_SCRYPT_MAXMEM)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$R$P$SALT$HASH`` (base64) for ``password`` with a random per-token salt."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


#: verified against when the user name is unknown, so the answer takes as long as for a known one; its
#: expected bytes never matter (an unknown name always fails), so no scrypt runs to build it at import
_DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(SALT_BYTES))}${_b64(bytes(HASH_BYTES))}"


def verify_password(password: str, encoded: str | None) -> bool:
    """Whether ``password`` matches ``encoded`` (constant-time compare); None verifies a dummy and fails."""
    try:
        algorithm, n, r, p, salt, expected = (encoded or _DUMMY_HASH).split("$")
        if algorithm != "scrypt":
            return False
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(base64.b64decode(expected)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, base64.b64decode(expected)) and encoded is not None


def parse_repositories(patterns: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise repository patterns (``ubuntu``, ``team/*``, ``*``); at least one."""
    result: list[str] = []
    for pattern in patterns:
        side = parse_repository(pattern.strip(), "repository pattern", "repositories")
        normalized = (f"{side.prefix}/*" if side.prefix else "*") if side.wildcard else side.prefix
        if normalized not in result:
            result.append(normalized)
    if not result:
        raise ValidationError("a token needs at least one --repository PATTERN (e.g. ubuntu, team/* or *)",
                              field="repositories")
    return tuple(result)


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """An ISO date or datetime (UTC unless it says otherwise) or a duration from now (``30d``)."""
    now = now or utc_now()
    value = check_printable(text, "expiry", "the expiry", max_length=64).strip()
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        try:
            when = now + timedelta(seconds=parse_duration(value))
        except (ValidationError, OverflowError):
            raise ValidationError(f"expiry {text!r} must be an ISO date or datetime in UTC (2026-12-31, "
                                  f"2026-12-31T18:00Z) or a duration from now (12h, 30d)", field="expiry") from None
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    if when <= now:
        raise ValidationError(f"expiry {text!r} is not in the future; give a later date or a duration such as 30d",
                              field="expiry")
    return when


@dataclass(frozen=True, slots=True)
class RepositoryScope:
    """Which repositories a token may pull: exact names, and prefixes whose whole subtree is covered."""

    patterns: tuple[str, ...]
    static: frozenset[str] = field(init=False, repr=False, compare=False)
    prefixes: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "static", frozenset(p for p in self.patterns if not p.endswith("*")))
        object.__setattr__(self, "prefixes", frozenset(p[:-2] if p != "*" else "" for p in self.patterns
                                                       if p.endswith("*")))

    @property
    def allows_all(self) -> bool:
        return "" in self.prefixes

    def allows(self, repository: str) -> bool:
        """``team/*`` covers ``team/app`` and ``team/a/b``, not ``team`` itself; ``*`` covers everything."""
        if repository in self.static or "" in self.prefixes:
            return True
        end = len(repository)
        while (end := repository.rfind("/", 0, end)) > 0:
            if repository[:end] in self.prefixes:
                return True
        return False


@dataclass(frozen=True, slots=True)
class ClientToken:
    """A client login; ``password_hash`` is the salted scrypt hash, never the password."""

    name: str
    repositories: tuple[str, ...]
    password_hash: str = field(repr=False)
    created_at: datetime | None = None
    expires_at: datetime | None = None
    last_used: datetime | None = None
    scope: RepositoryScope = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope", RepositoryScope(self.repositories))

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(timezone.utc))

    @property
    def status(self) -> str:
        return "expired" if self.expired() else "enabled"

    def allows(self, repository: str) -> bool:
        return self.scope.allows(repository)
