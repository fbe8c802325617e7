"""OCI distribution grammar: repository names, tags, digests and login servers.

The patterns follow the OCI distribution specification (and the distribution
registry's ``reference`` package, which clients such as docker and skopeo use).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# One path component: lower-case alphanumerics separated by '.', '_', '__' or runs of '-'.
PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_NAME = rf"{PATH_COMPONENT}(?:/{PATH_COMPONENT})*"
TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
DIGEST = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
# A hostname (DNS labels, or an IPv4 address) with an optional port; a bracketed IPv6 literal too.
LOGIN_SERVER = (
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?))*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)

_REPOSITORY_RE = re.compile(REPOSITORY_NAME)
_TAG_RE = re.compile(TAG)
_DIGEST_RE = re.compile(DIGEST)
_LOGIN_SERVER_RE = re.compile(LOGIN_SERVER)

#: The distribution registry refuses repository names longer than this.
MAX_REPOSITORY_LENGTH = 255

#: Digest algorithms we can verify, with the length of their hex encoding.
DIGEST_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}


def is_repository_name(name: str) -> bool:
    """True if ``name`` is a valid OCI repository name (``library/ubuntu``)."""
    return len(name) <= MAX_REPOSITORY_LENGTH and _REPOSITORY_RE.fullmatch(name) is not None


def is_tag(tag: str) -> bool:
    """True if ``tag`` is a valid OCI tag (``3.19``, ``latest``)."""
    return _TAG_RE.fullmatch(tag) is not None


def is_digest(digest: str) -> bool:
    """True if ``digest`` is a well-formed digest of an algorithm we can verify."""
    if _DIGEST_RE.fullmatch(digest) is None:
        return False
    algorithm, _, encoded = digest.partition(":")
    length = DIGEST_ALGORITHMS.get(algorithm)
    return length is not None and len(encoded) == length and all(c in "0123456789abcdef" for c in encoded)


def is_login_server(server: str) -> bool:
    """True if ``server`` is a ``host[:port]`` registry address."""
    if _LOGIN_SERVER_RE.fullmatch(server) is None:
        return False
    _, _, port = server.rpartition(":") if not server.endswith("]") else ("", "", "")
    if port.isdigit() and not 0 < int(port) < 65536:
        return False
    return True


def repository_problem(name: str) -> str | None:
    """Why ``name`` is not a valid repository name, or ``None`` if it is."""
    if not name:
        return "is empty"
    if len(name) > MAX_REPOSITORY_LENGTH:
        return f"is {len(name)} characters long; the limit is {MAX_REPOSITORY_LENGTH}"
    if _REPOSITORY_RE.fullmatch(name):
        return None
    if ":" in name:
        return "must not carry a tag (':TAG')"
    if "@" in name:
        return "must not carry a digest ('@sha256:...')"
    if name != name.lower():
        return "must be lower case"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "has an empty path segment"
    bad = next((c for c in name if not (c.isascii() and (c.isalnum() or c in "._-/"))), None)
    if bad is not None:
        return f"contains {bad!r}; only a-z, 0-9, '.', '_', '-' and '/' are allowed"
    return "has a segment that does not start and end with a letter or digit"


@dataclass(frozen=True, slots=True)
class Reference:
    """A manifest reference as a client sends it: a tag or a digest."""

    value: str

    @property
    def is_digest(self) -> bool:
        return ":" in self.value

    @classmethod
    def parse(cls, value: str) -> Reference | None:
        """The reference, or ``None`` when ``value`` is neither a tag nor a digest."""
        if is_tag(value) or is_digest(value):
            return cls(value)
        return None
