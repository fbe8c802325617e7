"""The pull side of OCI distribution-spec v1.1, as its conformance suite checks it, through regcache.

Each test is one expectation of opencontainers/distribution-spec ``conformance/01_pull_test.go`` (v1.1.1)
and of the tag listing in ``03_discovery_test.go``, asked of regcache in front of a real docker-registry:
the upstream holds the suite's setup (two manifests, the first tagged), regcache serves them.
"""

from __future__ import annotations

import hashlib

import pytest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: the suite's dummyDigest: godigest.FromString("hello world")
DUMMY_DIGEST = "sha256:" + hashlib.sha256(b"hello world").hexdigest()
#: the suite's nonexistentManifest: not a valid tag, so it cannot exist
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"
#: every code the spec defines (the suite's errorCodes)
ERROR_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
               "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN",
               "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"}
NAME = "conformance/pull"


@pytest.fixture
def pulled(regcache, anonymous_registry, push_image):
    """The suite's setup on the upstream: manifests[0] tagged ``tagtest0``, manifests[1] by digest only."""
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("conformance", f"{server}/conformance/*", "conformance/*")
    first = push_image(anonymous_registry, NAME, "tagtest0", layers=[2_000], seed="conformance-0")
    second = push_image(anonymous_registry, NAME, "second", layers=[3_000], seed="conformance-1")
    with regcache.http() as http:
        yield http, first, second


def _oci_error(answer) -> str:
    """The first error code of an OCI error body (asserting it is one)."""
    assert answer.headers["content-type"].startswith("application/json")
    errors = answer.json()["errors"]
    assert errors and errors[0]["code"] in ERROR_CODES and errors[0]["message"]
    return errors[0]["code"]


# -- Pull blobs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_nonexistent_blob_is_404(pulled, method):
    http, _, _ = pulled
    answer = http.request(method, f"/v2/{NAME}/blobs/{DUMMY_DIGEST}")
    assert answer.status_code == 404
    if method == "GET":
        assert _oci_error(answer) == "BLOB_UNKNOWN"
    else:
        assert answer.content == b""


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_existing_blob_is_200_with_its_digest(pulled, method):
    http, first, _ = pulled
    config = first.configs[0]
    answer = http.request(method, f"/v2/{NAME}/blobs/{config.digest}")
    assert answer.status_code == 200
    assert answer.headers["docker-content-digest"] == config.digest
    assert answer.headers["content-length"] == str(config.size)
    assert answer.content == (config.data if method == "GET" else b"")


# -- Pull manifests --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_nonexistent_manifest_is_404(pulled, method):
    http, _, _ = pulled
    answer = http.request(method, f"/v2/{NAME}/manifests/{NONEXISTENT_MANIFEST}")
    assert answer.status_code == 404
    if method == "GET":
        assert _oci_error(answer) == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("which", [0, 1])
def test_a_manifest_by_digest_is_200(pulled, method, which):
    http, *manifests = pulled
    manifest = manifests[which]
    answer = http.request(method, f"/v2/{NAME}/manifests/{manifest.digest}", headers={"Accept": OCI_MANIFEST})
    assert answer.status_code == 200
    assert answer.headers["docker-content-digest"] == manifest.digest
    assert answer.headers["content-type"] == OCI_MANIFEST
    assert answer.headers["content-length"] == str(len(manifest.manifest))
    assert answer.content == (manifest.manifest if method == "GET" else b"")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_manifest_by_tag_is_200_with_its_digest(pulled, method):
    http, first, _ = pulled
    answer = http.request(method, f"/v2/{NAME}/manifests/tagtest0", headers={"Accept": OCI_MANIFEST})
    assert answer.status_code == 200
    assert answer.headers["docker-content-digest"] == first.digest


# -- Error codes -----------------------------------------------------------------------------------


def test_an_invalid_digest_reference_is_400_with_an_oci_error_or_404(pulled):
    http, _, _ = pulled
    answer = http.request("GET", f"/v2/{NAME}/manifests/sha256:totallywrong",
                          headers={"Content-Type": OCI_MANIFEST}, content=b"blablabla")
    assert answer.status_code in (400, 404)
    if answer.status_code == 400:
        _oci_error(answer)


@pytest.mark.parametrize(("path", "status", "code"), [
    (f"/v2/{NAME}/blobs/sha256:totallywrong", 400, "DIGEST_INVALID"),
    (f"/v2/{NAME}/blobs/md5:{'0' * 32}", 400, "DIGEST_INVALID"),
    ("/v2/Conformance/Pull/manifests/tagtest0", 400, "NAME_INVALID"),
    ("/v2/nosuchrule/app/manifests/tagtest0", 404, "NAME_UNKNOWN"),
    ("/v2/nosuchrule/app/blobs/" + DUMMY_DIGEST, 404, "NAME_UNKNOWN"),
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_malformed_and_unknown_names_and_digests(pulled, path, status, code, method):
    http, _, _ = pulled
    answer = http.request(method, path)
    assert answer.status_code == status
    assert answer.headers["docker-distribution-api-version"] == "registry/2.0"
    if method == "GET":
        assert _oci_error(answer) == code
    else:
        assert answer.content == b""


# -- Content discovery: the tag list -------------------------------------------------------------


def test_the_tag_list_with_n_and_last(pulled):
    http, _, _ = pulled
    every = http.get(f"/v2/{NAME}/tags/list")
    assert every.status_code == 200 and every.json() == {"name": NAME, "tags": ["second", "tagtest0"]}
    first = http.get(f"/v2/{NAME}/tags/list", params={"n": 1})
    assert first.json()["tags"] == ["second"]
    assert first.headers["link"] == f'</v2/{NAME}/tags/list?n=1&last=second>; rel="next"'
    rest = http.get(f"/v2/{NAME}/tags/list", params={"n": 1, "last": "second"})
    assert rest.json()["tags"] == ["tagtest0"]
