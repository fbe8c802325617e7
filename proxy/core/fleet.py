"""The fleet: regcache nodes on one bucket that download each cold blob once between them (docs/scale-out.md).

Pure rules, no I/O: who the members are (their heartbeats, read from the bucket), which member owns a key
(rendezvous hashing: every node computes the same owner from the same members, with no coordinator, and a
member leaving moves only the keys it owned), whether two nodes may share downloads at all (the same
configuration fingerprint), how a peer request is signed with the fleet secret, and how a member's answer for
a manifest is signed and checked (a tag's answer names no digest in advance, so its bytes alone prove nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import CacheRule, CredentialSet, Upstream
from regcache.proxy.core.oci import manifest_problem, media_type_of
from regcache.proxy.core.references import is_digest

#: how long a member may go without a new heartbeat before the others stop asking it (seconds)
MEMBER_TTL = 6.0
#: how often a node writes its heartbeat (seconds): well inside the TTL, so one slow write is survived
HEARTBEAT_INTERVAL = 2.0
#: a signed peer request older or newer than this (seconds, clock difference included) is refused
SIGNATURE_WINDOW = 60.0
#: the header a peer request is signed in
SIGNATURE_HEADER = "X-Regcache-Fleet-Signature"
#: the header a member's manifest answer is signed in (bound to the request it answers)
ANSWER_HEADER = "X-Regcache-Fleet-Answer"
#: when the answering member's upstream last confirmed the tag (seconds since the epoch, its clock)
VALIDATED_HEADER = "X-Regcache-Validated-At"
#: why the answering member serves the tag stale: its upstream failed (unreachable) or no longer has it (deleted)
STALE_REASON_HEADER = "X-Regcache-Fleet-Stale"
STALE_UNREACHABLE, STALE_DELETED = "unreachable", "deleted"


@dataclass(frozen=True, slots=True)
class Member:
    """One node as its heartbeat describes it."""

    node_id: str
    #: where the other nodes reach its peer endpoint, e.g. http://10.0.0.5:5000
    address: str
    #: the configuration fingerprint: only nodes with equal ones share downloads
    fingerprint: str
    version: str
    #: increases with every heartbeat; a reader sees the member alive while it keeps changing
    beat: int

    def to_json(self) -> bytes:
        return json.dumps({"node_id": self.node_id, "address": self.address, "fingerprint": self.fingerprint,
                           "version": self.version, "beat": self.beat}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, content: bytes) -> Member:
        """A heartbeat read from the bucket; ValidationError when it is not one (anyone with the keys can write)."""
        try:
            data = json.loads(content)
            member = cls(str(data["node_id"]), str(data["address"]), str(data["fingerprint"]),
                         str(data["version"]), int(data["beat"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ValidationError("not a fleet heartbeat") from None
        if not (0 < len(member.node_id) <= 64 and member.address.startswith(("http://", "https://"))
                and len(member.address) <= 300 and member.address.isprintable()):
            raise ValidationError("a fleet heartbeat with an invalid node id or address")
        if not (len(member.version) <= 64 and len(member.fingerprint) <= 64):  # shown by fleet status and the TUI
            raise ValidationError("a fleet heartbeat with an over-long version or fingerprint")
        return member


def _score(node_id: str, key: str) -> bytes:
    return hashlib.sha256(f"{node_id}\0{key}".encode()).digest()


def owner_of(key: str, members: Iterable[Member]) -> Member | None:
    """The member that downloads ``key`` for the fleet: the highest rendezvous score (None: no members)."""
    return max(members, key=lambda m: (_score(m.node_id, key), m.node_id), default=None)


def ranked(key: str, members: Iterable[Member]) -> list[Member]:
    """Members in the order they own ``key``: the owner, then who takes over if it fails, and so on."""
    return sorted(members, key=lambda m: (_score(m.node_id, key), m.node_id), reverse=True)


def fingerprint(rules: Sequence[CacheRule], upstreams: Sequence[Upstream],
                credential_sets: Sequence[CredentialSet]) -> str:
    """What must be equal for two nodes to fetch for each other: rules (name, source, target, credential set),
    upstreams (login server, URL, policy, allowed origins) and credential-set identities (secret ids)."""
    doc = {
        "rules": sorted([r.name, r.source_repository, r.target_repository, r.credential_set or ""] for r in rules),
        "upstreams": sorted([u.login_server, u.base_url, u.auth_policy.value, sorted(u.allowed_origins)]
                            for u in upstreams),
        "credential_sets": sorted([c.name, c.login_server, c.username_secret_id, c.password_secret_id]
                                  for c in credential_sets),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def signature(secret: str, method: str, target: str, node_id: str, timestamp: int) -> str:
    """``NODE:TIMESTAMP:HMAC`` for a peer request to ``target`` (path and query), keyed by the fleet secret."""
    mac = hmac.new(secret.encode(), f"{method}\n{target}\n{node_id}\n{timestamp}".encode(), hashlib.sha256)
    return f"{node_id}:{timestamp}:{mac.hexdigest()}"


def verify_signature(secret: str, method: str, target: str, header: str, now: float) -> str | None:
    """The signing node's id when ``header`` signs this request within :data:`SIGNATURE_WINDOW`, else None."""
    node_id, _, rest = header.partition(":")
    timestamp_text, _, mac = rest.partition(":")
    if not node_id or not timestamp_text.isdigit() or abs(now - int(timestamp_text)) > SIGNATURE_WINDOW:
        return None
    expected = signature(secret, method, target, node_id, int(timestamp_text))
    return node_id if hmac.compare_digest(expected, header) else None


def manifest_key(source: str, reference: str) -> str:
    """What a manifest's owner is chosen by: the source and the tag or digest, so every revalidation of one tag
    of one source, on any node, goes to the same member (a blob's key is its bare digest)."""
    return f"manifest\0{source}\0{reference}"


def answer_signature(secret: str, request_signature: str, digest: str, media_type: str, validated_at: str,
                     stale: str) -> str:
    """The HMAC of a member's manifest answer, bound to the request it answers (its signature header)."""
    message = "\n".join(("answer", request_signature, digest, media_type, validated_at, stale))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    """A member's answer for a manifest, checked: bytes, their digest and media type, when the member's upstream
    last confirmed the tag (seconds since the epoch, never later than the asker's now; None for a digest), and
    why the member serves it stale (None: confirmed)."""

    digest: str
    media_type: str
    content: bytes
    validated_at: float | None
    stale: str | None


def verify_manifest_answer(secret: str, request_signature: str, content: bytes, digest: str, content_type: str,
                           validated_at: str, stale: str, mac: str, now: float,
                           expected: str | None = None) -> ManifestAnswer:
    """The answer when it is a fleet member's (signed with the secret, for this request), its bytes match its
    digest (and ``expected``, when asked by digest) and are a manifest regcache stores; ValidationError saying
    why not. A tag's answer is no content address: without the signature, whoever can write a heartbeat into
    the bucket could answer any manifest for any tag."""
    if not hmac.compare_digest(answer_signature(secret, request_signature, digest, content_type, validated_at,
                                                stale), mac):
        raise ValidationError("the answer is not signed with this fleet's secret for this request")
    if not is_digest(digest):
        raise ValidationError("the answer names no sha256 or sha512 digest")
    algorithm = digest.partition(":")[0]
    if f"{algorithm}:{hashlib.new(algorithm, content).hexdigest()}" != digest:
        raise ValidationError(f"the bytes do not match {digest}")
    if expected is not None and digest != expected:
        raise ValidationError(f"the answer is {digest}, not the {expected} asked for")
    media_type = media_type_of(content, content_type)
    problem = manifest_problem(content, media_type)
    if problem is not None:
        raise ValidationError(f"the answer is no manifest regcache stores: {problem}")
    when: float | None = None
    if validated_at:
        try:
            when = float(validated_at)
        except ValueError:
            raise ValidationError("the answer's validation time is not a number") from None
        if not (math.isfinite(when) and when >= 0):
            raise ValidationError("the answer's validation time is not a time")
        when = min(when, now)  # a member's clock ahead of ours must not stretch our freshness window
    if stale not in ("", STALE_UNREACHABLE, STALE_DELETED):
        raise ValidationError("the answer's stale reason is not one regcache sends")
    return ManifestAnswer(digest, media_type, content, when, stale or None)
