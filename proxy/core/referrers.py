"""Referrers of a manifest (OCI distribution-spec v1.1): the index regcache answers, whatever the upstream sent.

An upstream either has the referrers API (``GET /v2/<name>/referrers/<digest>`` answers an image index)
or not (it answers 404); then the spec's fallback is the *tag scheme*: an index tagged
``<alg>-<hex>`` of the subject digest lists its referrers. Either way regcache rebuilds the answer
from descriptors it checked, so nothing but a well-formed OCI index with valid digests, media types
and annotations ever reaches a client, whatever bytes the upstream sent. Everything here is pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from regcache.proxy.core.oci import OCI_INDEX, descriptor_problem, load_json

#: what an upstream's referrers answer (or its fallback tag) may list at most; more are dropped
MAX_REFERRERS = 10_000
#: the header that says a filter was applied (distribution-spec: ``OCI-Filters-Applied: artifactType``)
FILTERS_APPLIED_HEADER = "OCI-Filters-Applied"


def fallback_tag(digest: str) -> str:
    """The tag-scheme tag of a subject: ``sha256:abc...`` -> ``sha256-abc...``."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded}"


def _is_text(value: object, limit: int = 4096) -> bool:
    return isinstance(value, str) and len(value) <= limit and value.isprintable()


@dataclass(frozen=True, slots=True)
class Referrer:
    """One descriptor of a referrers index: a manifest whose ``subject`` is the asked digest."""

    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        descriptor: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            descriptor["artifactType"] = self.artifact_type
        if self.annotations:
            descriptor["annotations"] = dict(self.annotations)
        return descriptor


def _referrer(entry: object) -> Referrer | None:
    """A descriptor as a Referrer; None when any field is missing or malformed (it is dropped)."""
    if descriptor_problem(entry, "a referrer") is not None or not isinstance(entry, dict):
        return None
    media_type, artifact_type, annotations = entry.get("mediaType"), entry.get("artifactType"), entry.get(
        "annotations") or {}
    if not isinstance(media_type, str):  # optional in a descriptor, required of a referrer
        return None
    if not isinstance(annotations, dict) or len(annotations) > 64 or not all(
            _is_text(k, 255) and _is_text(v) for k, v in annotations.items()):
        return None
    return Referrer(media_type, entry["digest"], entry["size"],
                    artifact_type if isinstance(artifact_type, str) else None, dict(annotations))


def parse_index(content: bytes) -> list[Referrer] | None:
    """The referrers an index lists (malformed descriptors dropped); None if it is no image index at all."""
    try:
        index = load_json(content)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(index, dict) or index.get("schemaVersion") != 2:
        return None
    if index.get("mediaType", OCI_INDEX) != OCI_INDEX or not isinstance(index.get("manifests", []), list):
        return None
    found = (_referrer(entry) for entry in index.get("manifests", [])[:MAX_REFERRERS])
    return [r for r in found if r is not None]


def build_index(referrers: Iterable[Referrer], artifact_type: str | None = None) -> bytes:
    """The OCI image index regcache answers, filtered by ``artifact_type`` when one is asked."""
    chosen = [r for r in referrers if artifact_type is None or r.artifact_type == artifact_type]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [r.to_json() for r in chosen]},
                      separators=(",", ":")).encode()


def to_stored(referrers: Iterable[Referrer]) -> str:
    """The referrers as the state database keeps them (JSON)."""
    return json.dumps([r.to_json() for r in referrers], separators=(",", ":"))


def from_stored(text: str) -> list[Referrer]:
    entries = json.loads(text)
    return [r for r in (_referrer(e) for e in entries) if r is not None]
