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
    """The manifest's media type: the upstream's Content-Type, else its ``mediaType`` field."""
    if declared:
        declared = declared.split(";")[0].strip()
        if declared in MANIFEST_TYPES:
            return declared
    try:
        doc = json.loads(content)
    except ValueError:
        return declared or "application/octet-stream"
    if isinstance(doc, dict):
        media_type = doc.get("mediaType")
        if isinstance(media_type, str):
            return media_type
        if "manifests" in doc:
            return OCI_INDEX
        if "config" in doc:
            return OCI_MANIFEST
    return declared or "application/octet-stream"
