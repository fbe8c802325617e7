"""The fleet's pure rules: rendezvous ownership, configuration fingerprints, heartbeats, peer signatures and the
checks of a member's manifest answer."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.fleet import (
    SIGNATURE_WINDOW,
    STALE_DELETED,
    Member,
    answer_signature,
    fingerprint,
    manifest_key,
    owner_of,
    ranked,
    signature,
    verify_manifest_answer,
    verify_signature,
)
from regcache.proxy.core.models import AuthPolicy, CacheRule, CredentialSet, Upstream
from regcache.proxy.core.oci import OCI_MANIFEST


def members(n: int) -> list[Member]:
    return [Member(f"node-{i}", f"http://10.0.0.{i}:5000", "fp", "1.0", 1) for i in range(n)]


def test_every_node_computes_the_same_owner_whatever_the_order_it_lists_members():
    fleet = members(5)
    for key in (f"sha256:{i:064x}" for i in range(50)):
        assert owner_of(key, fleet) == owner_of(key, list(reversed(fleet))) == ranked(key, fleet)[0]


def test_ownership_spreads_and_a_leaving_member_moves_only_its_own_keys():
    fleet = members(4)
    keys = [f"sha256:{i:064x}" for i in range(2000)]
    before = {key: owner_of(key, fleet) for key in keys}
    assert all(count > 350 for count in Counter(m.node_id for m in before.values()).values())
    gone = fleet[2]
    after = {key: owner_of(key, [m for m in fleet if m != gone]) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert moved and all(before[key] == gone for key in moved)
    # who takes over is who ranked second
    assert all(after[key] == ranked(key, fleet)[1] for key in moved)
    assert owner_of("sha256:0", []) is None


def test_the_fingerprint_changes_with_what_decides_a_fetch_and_nothing_else():
    rules = [CacheRule("team-rule", "ghcr.io/acme/*", "team/*", "creds")]
    upstreams = [Upstream("ghcr.io", "https://ghcr.io", AuthPolicy.BOTH)]
    sets = [CredentialSet("creds", "ghcr.io", "keyring://a/u", "keyring://a/p")]
    base = fingerprint(rules, upstreams, sets)
    assert fingerprint(list(reversed(rules)), upstreams, sets) == base
    assert fingerprint([CacheRule("team-rule", "ghcr.io/other/*", "team/*", "creds")], upstreams, sets) != base
    assert fingerprint(rules, [Upstream("ghcr.io", "https://mirror.example", AuthPolicy.BOTH)], sets) != base
    assert fingerprint(rules, upstreams, [CredentialSet("creds", "ghcr.io", "keyring://a/u", "env://P")]) != base
    # settings that decide nothing about a fetch (freshness) do not split the fleet
    assert fingerprint([CacheRule("team-rule", "ghcr.io/acme/*", "team/*", "creds", freshness=60)],
                       upstreams, sets) == base


def test_a_heartbeat_round_trips_and_garbage_is_refused():
    member = Member("node-1", "https://10.0.0.1:5000", "fp", "0.2.0", 7)
    assert Member.from_json(member.to_json()) == member
    for bad in (b"", b"[]", b'{"node_id": "x"}', b"{" * 10_000,
                Member("", "http://a:1", "f", "v", 1).to_json(),
                Member("n", "file:///etc/passwd", "f", "v", 1).to_json(),
                Member("n", "http://a:1/\x1b[2J", "f", "v", 1).to_json(),
                Member("n", "http://a:1", "f", "v" * 65, 1).to_json(),  # shown on screens: bounded
                Member("n", "http://a:1", "f" * 65, "v", 1).to_json()):
        with pytest.raises(ValidationError):
            Member.from_json(bad)


def test_a_peer_request_is_signed_for_its_method_target_node_and_time():
    header = signature("s3cret", "GET", "/_regcache/peer/v1/team/app/blobs/sha256:0?source=x", "node-1", 1000)
    assert verify_signature("s3cret", "GET", "/_regcache/peer/v1/team/app/blobs/sha256:0?source=x", header,
                            1000) == "node-1"
    assert verify_signature("other", "GET", "/_regcache/peer/v1/team/app/blobs/sha256:0?source=x", header, 1000) is None
    assert verify_signature("s3cret", "GET", "/_regcache/peer/v1/team/app/blobs/sha256:1?source=x", header,
                            1000) is None
    assert verify_signature("s3cret", "HEAD", "/_regcache/peer/v1/team/app/blobs/sha256:0?source=x", header,
                            1000) is None
    assert verify_signature("s3cret", "GET", "/_regcache/peer/v1/team/app/blobs/sha256:0?source=x", header,
                            1000 + SIGNATURE_WINDOW + 1) is None  # replayed later
    forged = header.replace("node-1", "node-2", 1)
    assert verify_signature("s3cret", "GET", "/_regcache/peer/v1/team/app/blobs/sha256:0?source=x", forged,
                            1000) is None
    for junk in ("", "node", "node:abc:def", "::", "n:1000"):
        assert verify_signature("s3cret", "GET", "/", junk, 1000) is None


MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "a" * 64, "size": 2},
                       "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
REQUEST = signature("s3cret", "GET", "/_regcache/peer/v1/team/app/manifests/1.0?source=x&max-age=0", "node-1", 1000)


def answer(content: bytes = MANIFEST, digest: str = MANIFEST_DIGEST, media_type: str = OCI_MANIFEST,
           validated: str = "990.5", stale: str = "", secret: str = "s3cret", request: str = REQUEST,
           now: float = 1000.0, expected: str | None = None):
    mac = answer_signature(secret, request, digest, media_type, validated, stale)
    return verify_manifest_answer("s3cret", REQUEST, content, digest, media_type, validated, stale, mac, now,
                                  expected)


def test_a_members_manifest_answer_is_taken_signed_for_this_request_with_bytes_matching_its_digest():
    got = answer()
    assert (got.digest, got.media_type, got.content, got.validated_at, got.stale) == (
        MANIFEST_DIGEST, OCI_MANIFEST, MANIFEST, 990.5, None)
    assert answer(expected=MANIFEST_DIGEST).digest == MANIFEST_DIGEST
    assert answer(validated="").validated_at is None  # a digest's answer has no validation time
    assert answer(stale=STALE_DELETED).stale == STALE_DELETED
    # a member's clock ahead of ours never stretches our freshness window
    assert answer(validated="5000").validated_at == 1000.0


@pytest.mark.parametrize(("change", "why"), [
    ({"secret": "not-the-fleets"}, "not signed"),
    ({"request": REQUEST.replace("node-1", "node-2", 1)}, "not signed"),  # an answer to another request
    ({"content": MANIFEST + b" "}, "do not match"),
    ({"digest": "sha256:" + "0" * 64}, "do not match"),
    ({"digest": "md5:" + "0" * 32}, "no sha256"),
    ({"expected": "sha256:" + "1" * 64}, "not the"),
    ({"content": b"<html></html>", "digest": "sha256:" + hashlib.sha256(b"<html></html>").hexdigest(),
      "media_type": "text/html"}, "no manifest"),
    ({"validated": "nan"}, "not a time"),
    ({"validated": "-1"}, "not a time"),
    ({"validated": "1e999"}, "not a time"),
    ({"validated": "yesterday"}, "not a number"),
    ({"stale": "because"}, "stale reason"),
])
def test_a_manifest_answer_is_refused_unless_every_check_passes(change, why):
    with pytest.raises(ValidationError, match=why):
        answer(**change)


def test_each_tag_of_each_source_has_its_own_owner_key():
    keys = {manifest_key(source, ref) for source in ("anonymous/r.example/a", "credential-set/c/r.example/a")
            for ref in ("1.0", "1.1", MANIFEST_DIGEST)}
    assert len(keys) == 6
    # no source and tag can be spelled to collide with another pair
    assert manifest_key("a/b", "c") != manifest_key("a", "b/c")


def test_a_member_that_failed_lately_is_passed_over_and_that_is_told():
    """The owner a node asks skips a member that just failed it, for MEMBER_TTL; what that member would have
    owned is then fetched by the next-ranked one (here: this node), and `passed_over` says so (a metric)."""
    from regcache.proxy.core.fleet import MEMBER_TTL, ranked
    from regcache.proxy.storage.fleet import FleetMembership

    now = [1000.0]
    me, other = Member("node-me", "http://a", "fp", "1", 1), Member("node-other", "http://b", "fp", "1", 1)
    fleet = FleetMembership(objects=None, me=me, clock=lambda: now[0])  # type: ignore[arg-type]
    fleet._seen[other.node_id] = (other, now[0])  # read from the bucket just now
    key = next(k for k in (f"sha256:{i:064x}" for i in range(100)) if ranked(k, [me, other])[0] == other)
    assert fleet.owner(key) == other and not fleet.passed_over(key)
    fleet.failed(other.node_id)
    assert fleet.owner(key) == me and fleet.passed_over(key)
    now[0] += MEMBER_TTL + 0.1
    fleet._seen[other.node_id] = (other, now[0])  # still heartbeating: asked again
    assert fleet.owner(key) == other and not fleet.passed_over(key)
