"""OCI distribution constants: manifest media types, a manifest's type from its content, and what an upstream's
manifests and indexes must look like before they are stored or served."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from regcache.proxy.core.references import is_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: What we ask upstreams for, and can store and serve.
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)


def load_json(content: bytes | str) -> object:
    """``content`` parsed, or ValueError: JSON nested too deeply for the parser (a few kilobytes of ``[``) is
    malformed too, not a crash."""
    try:
        return json.loads(content)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def media_type_of(content: bytes, declared: str | None) -> str:
    """A manifest's media type, from its content: an upstream's Content-Type can never relabel one.

    Its ``mediaType`` field when it has one; else its structure (an OCI index lists ``manifests``, an
    OCI image has ``config``; Docker's formats always carry the field). ``declared`` (the upstream's
    Content-Type) is only the answer for content that is neither, e.g. schema 1.
    """
    declared = (declared or "").split(";")[0].strip()
    try:
        doc = load_json(content)
    except ValueError:
        return declared or "application/octet-stream"
    if not isinstance(doc, dict):
        return declared or "application/octet-stream"
    field = doc.get("mediaType")
    if isinstance(field, str) and field:
        return field
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc or "layers" in doc:
        return OCI_MANIFEST
    return declared or "application/octet-stream"


#: RFC 6838 ``type/subtype``, as the OCI image specification requires of a descriptor's ``mediaType``: no
#: parameters, no spaces, no control characters (such a string can never break a response header)
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_PLATFORM_FIELDS = ("os", "architecture", "variant", "os.version")


def is_media_type(value: object) -> bool:
    """True if ``value`` is a plain ``type/subtype`` media type (RFC 6838 characters only)."""
    return isinstance(value, str) and _MEDIA_TYPE.fullmatch(value) is not None


def shown(value: object, limit: int = 80) -> str:
    """A value from an upstream, safe to put in a message: quoted, escapes visible, cut at ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def descriptor_problem(descriptor: object, where: str) -> str | None:
    """Why ``descriptor`` (at ``where`` in its manifest) is not an OCI content descriptor we can follow, or None.

    Its digest must be sha256 or sha512 in lower-case hex of the right length (never md5:, sha1:, upper case or
    a wrong length), its size a non-negative integer, and its media type (and artifact type) plain
    ``type/subtype`` strings.
    """
    if not isinstance(descriptor, Mapping):
        return f"{where} is not a descriptor (a JSON object)"
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        return f"{where} has the digest {shown(digest)}; only sha256 and sha512 digests in lower-case hex are accepted"
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"{where} has the size {shown(size)}, not a non-negative integer"
    for key in ("mediaType", "artifactType"):
        if key in descriptor and not is_media_type(descriptor[key]):
            return f"{where} has the {key} {shown(descriptor[key])}, not a media type"
    platform = descriptor.get("platform")
    if platform is not None and not (isinstance(platform, Mapping) and all(
            isinstance(platform.get(key, ""), str) for key in _PLATFORM_FIELDS)):
        return f"{where} has a platform that is not an object of strings"
    return None


def _descriptors_problem(doc: Mapping[str, object], key: str) -> str | None:
    entries = doc.get(key)
    if not isinstance(entries, list):
        return f"its {key} is not a list"
    for i, entry in enumerate(entries):
        problem = descriptor_problem(entry, f"{key}[{i}]")
        if problem:
            return problem
    return None


def manifest_problem(content: bytes, media_type: str) -> str | None:
    """Why ``content``, of ``media_type`` (from :func:`media_type_of`), cannot be stored and served as a manifest;
    None when it can.

    Only the OCI and Docker image manifest and index types are kept (never ``text/html``, never schema 1); the
    content must be a JSON object whose ``mediaType``, when present, is that type, and whose descriptors
    (``manifests``, or ``config`` and ``layers``, and any ``subject``) pass :func:`descriptor_problem`.
    """
    if media_type not in MANIFEST_TYPES:
        return f"its media type is {shown(media_type)}, not an OCI or Docker image manifest or index"
    try:
        doc = load_json(content)
    except ValueError:
        return "it is not JSON"
    if not isinstance(doc, dict):
        return "it is not a JSON object"
    if doc.get("mediaType", media_type) != media_type:
        return f"its mediaType {shown(doc.get('mediaType'))} is not {media_type}"
    if media_type in INDEX_TYPES:
        problem = _descriptors_problem(doc, "manifests")
    else:
        problem = descriptor_problem(doc.get("config"), "config") or _descriptors_problem(doc, "layers")
    if problem is None and "subject" in doc:
        problem = descriptor_problem(doc["subject"], "subject")
    return problem
