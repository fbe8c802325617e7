"""OCI distribution constants: manifest media types, and a manifest's type from its content."""

from __future__ import annotations

import json

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: What we ask upstreams for, and can store and serve.
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)


def media_type_of(content: bytes, declared: str | None) -> str:
    """A manifest's media type, from its content: an upstream's Content-Type can never relabel one.

    Its ``mediaType`` field when it has one; else its structure (an OCI index lists ``manifests``, an
    OCI image has ``config``; Docker's formats always carry the field). ``declared`` (the upstream's
    Content-Type) is only the answer for content that is neither, e.g. schema 1.
    """
    declared = (declared or "").split(";")[0].strip()
    try:
        doc = json.loads(content)
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
