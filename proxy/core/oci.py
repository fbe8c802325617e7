"""OCI distribution constants: media types and the error codes of the registry API."""

from __future__ import annotations

import json

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: What we ask upstreams for, and can store and serve.
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


class RegistryError(Exception):
    """An error answered to a registry client as OCI error JSON with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, detail: object = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> bytes:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()


def name_unknown(message: str, detail: object = None) -> RegistryError:
    return RegistryError(404, "NAME_UNKNOWN", message, detail)


def manifest_unknown(message: str, detail: object = None) -> RegistryError:
    return RegistryError(404, "MANIFEST_UNKNOWN", message, detail)


def blob_unknown(message: str, detail: object = None) -> RegistryError:
    return RegistryError(404, "BLOB_UNKNOWN", message, detail)


def unsupported(message: str) -> RegistryError:
    return RegistryError(405, "UNSUPPORTED", message)


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
        if isinstance(doc.get("mediaType"), str):
            return doc["mediaType"]
        if "manifests" in doc:
            return OCI_INDEX
        if "config" in doc:
            return OCI_MANIFEST
    return declared or "application/octet-stream"
