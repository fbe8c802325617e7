"""Upstream authentication: ``WWW-Authenticate`` challenges and the bearer-token cache."""

from __future__ import annotations

import base64
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

    def put(self, key: tuple, header: str, expires_in: float) -> None:
        # Renew a little early so a token never expires between our check and the upstream's.
        self._tokens[key] = _Token(header, self._clock() + max(expires_in * 0.9 - 5, 1))

    def forget(self, key: tuple) -> None:
        self._tokens.pop(key, None)
