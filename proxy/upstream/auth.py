"""Upstream authentication: ``WWW-Authenticate`` challenges and the bearer-token cache."""

from __future__ import annotations

import base64
import math
import re
import time
from dataclasses import dataclass, field

# key=value or key="quoted \" value", separated by commas
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge, e.g. ``Bearer realm="...",service="..."``."""

    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenge(header: str) -> Challenge | None:
    """Parse a ``WWW-Authenticate`` header; ``None`` if it is empty or malformed."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", scheme):
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[m.group(1).lower()] = value
        pos = m.end()
    return Challenge(scheme.lower(), params)


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


#: seconds a token is reused when its token service gives no ``expires_in`` (the distribution spec's default)
DEFAULT_TOKEN_LIFETIME = 60.0
#: bounds on a token's reuse, whatever the token service claims (the upper one is the token-max-lifetime setting)
MIN_TOKEN_LIFETIME = 1.0
MAX_TOKEN_LIFETIME = 86400.0


def token_lifetime(expires_in: object, longest: float = MAX_TOKEN_LIFETIME) -> float:
    """Seconds a token may be reused: ``expires_in`` from a token answer, clamped to a finite range.

    Absent: 60 s. Not a number, NaN, zero or negative: the minimum (ask again soon rather than trust it).
    Infinite or huge (``1e999``, ``10**400``): ``longest``, which is itself at least the minimum.
    """
    longest = max(longest, MIN_TOKEN_LIFETIME) if math.isfinite(longest) else MAX_TOKEN_LIFETIME
    if expires_in is None:
        value = DEFAULT_TOKEN_LIFETIME
    elif isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
        return MIN_TOKEN_LIFETIME
    else:
        try:
            value = float(expires_in)
        except OverflowError:  # an int beyond float range
            value = math.inf
        except ValueError:
            return MIN_TOKEN_LIFETIME
    if math.isnan(value) or value < MIN_TOKEN_LIFETIME:
        return MIN_TOKEN_LIFETIME
    return min(value, longest)


@dataclass(slots=True)
class _Token:
    header: str
    expires: float


class TokenCache:
    """Authorization headers per (upstream, repository scope, credential identity), until they expire."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple, _Token] = {}

    def get(self, key: tuple) -> str | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        if token.expires <= self._clock():
            del self._tokens[key]
            return None
        return token.header

    def put(self, key: tuple, header: str, expires_in: object, longest: float = MAX_TOKEN_LIFETIME) -> None:
        """Keep ``header`` for ``expires_in`` seconds, clamped by :func:`token_lifetime` (never forever)."""
        lifetime = token_lifetime(expires_in, longest)
        # Renew a little early so a token never expires between our check and the upstream's.
        self._tokens[key] = _Token(header, self._clock() + max(lifetime * 0.9 - 5, MIN_TOKEN_LIFETIME))

    def remaining(self, key: tuple) -> float | None:
        """Seconds until the token kept under ``key`` is renewed; None when there is none."""
        token = self._tokens.get(key)
        return None if token is None else token.expires - self._clock()

    def forget(self, key: tuple) -> None:
        self._tokens.pop(key, None)
