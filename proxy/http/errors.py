"""OCI error answers: the one place that gives the engine's errors an HTTP status and an error code."""

from __future__ import annotations

import json

from regcache.proxy.core.errors import (
    BlobUnknown,
    CacheUnavailable,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    PullError,
    StorageFull,
    UpstreamAuthFailed,
    UpstreamBadContent,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

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


#: every PullError kind -> (HTTP status, OCI error code); the most specific class in an error's MRO wins
PULL_ERRORS: dict[type, tuple[int, str]] = {
    NameUnknown: (404, "NAME_UNKNOWN"),
    ManifestUnknown: (404, "MANIFEST_UNKNOWN"),
    BlobUnknown: (404, "BLOB_UNKNOWN"),
    UpstreamUnavailable: (503, "UNAVAILABLE"),
    UpstreamRateLimited: (429, "TOOMANYREQUESTS"),
    UpstreamAuthFailed: (401, "UNAUTHORIZED"),
    UpstreamBadContent: (502, "UNKNOWN"),
    ManifestInvalid: (502, "MANIFEST_INVALID"),
    CacheUnavailable: (503, "UNAVAILABLE"),
    StorageFull: (507, "UNAVAILABLE"),
    PullError: (500, "UNKNOWN"),
}


def oci_error(exc: PullError | RegistryError) -> RegistryError:
    """The OCI error a client gets for ``exc``."""
    if isinstance(exc, RegistryError):
        return exc
    status, code = next(PULL_ERRORS[kind] for kind in type(exc).__mro__ if kind in PULL_ERRORS)
    return RegistryError(status, code, exc.message, exc.detail)


def unsupported(message: str) -> RegistryError:
    return RegistryError(405, "UNSUPPORTED", message)
