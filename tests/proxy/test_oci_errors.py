"""The one table that gives the engine's errors an HTTP status and an OCI error code."""

from __future__ import annotations

import json

import pytest

from regcache.proxy.core import errors
from regcache.proxy.core.errors import PullError
from regcache.proxy.http.errors import PULL_ERRORS, RegistryError, oci_error


def _kinds(cls: type) -> list[type]:
    return [cls] + [k for sub in cls.__subclasses__() for k in _kinds(sub)]


def test_every_pull_error_kind_has_its_own_row():
    declared = [k for k in _kinds(PullError) if k.__module__ == errors.__name__]
    assert len(declared) >= 10 and set(declared) <= set(PULL_ERRORS)


@pytest.mark.parametrize(("kind", "status", "code"), [
    (errors.NameUnknown, 404, "NAME_UNKNOWN"),
    (errors.ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
    (errors.BlobUnknown, 404, "BLOB_UNKNOWN"),
    (errors.UpstreamUnavailable, 503, "UNAVAILABLE"),
    (errors.UpstreamRateLimited, 429, "TOOMANYREQUESTS"),
    (errors.UpstreamAuthFailed, 401, "UNAUTHORIZED"),
    (errors.UpstreamBadContent, 502, "UNKNOWN"),
    (errors.ManifestInvalid, 502, "MANIFEST_INVALID"),
    (errors.CacheUnavailable, 503, "UNAVAILABLE"),
    (errors.StorageFull, 507, "UNAVAILABLE"),
])
def test_a_pull_error_answers_with_its_status_and_code(kind, status, code):
    answer = oci_error(kind("what happened and what to do", detail={"digest": "sha256:0"}))
    assert (answer.status, answer.code) == (status, code)
    assert json.loads(answer.body()) == {"errors": [{"code": code, "message": "what happened and what to do",
                                                     "detail": {"digest": "sha256:0"}}]}


def test_an_error_of_the_http_layer_passes_unchanged():
    refused = RegistryError(416, "RANGE_INVALID", "no such range")
    assert oci_error(refused) is refused
