"""What the engine accepts from an upstream and serves (issue: hostile upstreams): only OCI and Docker manifest
and index types, only sha256/sha512 digests, only OCI tags, only an OCI index as a referrers answer; nothing
with a control character ever reaches a response header. Against the hostile upstream and the real server."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import time

import pytest

from regcache.proxy.core.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor_problem,
    manifest_problem,
)
from regcache.proxy.core.referrers import parse_index
from tests.helpers.cli import ok
from tests.helpers.hostile_upstream import HostileUpstream

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
SHA256 = "sha256:" + "a" * 64
SHA512 = "sha512:" + "b" * 128
BAD_DIGESTS = ["md5:d41d8cd98f00b204e9800998ecf8427e", "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709",
               "sha256:" + "A" * 64, "SHA256:" + "a" * 64, "sha256:" + "a" * 63, "sha512:" + "a" * 64,
               "sha256:" + "a" * 64 + "\r\nX-Evil: 1", "", None, 12]


def descriptor(digest: object = SHA256, media_type: object = LAYER_TYPE, size: object = 10) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size}


def image(layer_digest: object = SHA256, config_digest: object = SHA256, media_type: str = OCI_MANIFEST,
          **extra: object) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "config": descriptor(config_digest, CONFIG_TYPE),
                       "layers": [descriptor(layer_digest)], **extra}).encode()


def index(*children: dict, media_type: str = OCI_INDEX) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": list(children)}).encode()


def digest_of(content: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, content).hexdigest()}"


# -- the rules, as pure functions ---------------------------------------------------------------


@pytest.mark.parametrize("content,media_type", [
    (image(), OCI_MANIFEST), (image(media_type=DOCKER_MANIFEST), DOCKER_MANIFEST),
    (index(descriptor(SHA256, OCI_MANIFEST)), OCI_INDEX),
    (index(descriptor(SHA512, OCI_MANIFEST), media_type=DOCKER_MANIFEST_LIST), DOCKER_MANIFEST_LIST),
    (index(), OCI_INDEX), (image(subject=descriptor(SHA256, OCI_MANIFEST)), OCI_MANIFEST),
])
def test_oci_and_docker_manifests_and_indexes_pass(content, media_type):
    assert manifest_problem(content, media_type) is None


@pytest.mark.parametrize("content,media_type,problem", [
    (b"<html><body>login</body></html>", "text/html", "not an OCI or Docker"),
    (b"<html><body>login</body></html>", OCI_MANIFEST, "not JSON"),
    (b'["a"]', OCI_MANIFEST, "not a JSON object"),
    (image(media_type="text/html"), "text/html", "not an OCI or Docker"),
    (image(), OCI_INDEX, "mediaType"),
    (b'{"schemaVersion":1,"name":"x","fsLayers":[]}', "application/vnd.docker.distribution.manifest.v1+prettyjws",
     "not an OCI or Docker"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(), OCI_MANIFEST, "config"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {"a": 1}}).encode(), OCI_INDEX,
     "not a list"),
    (index("sha256:" + "a" * 64), OCI_INDEX, "not a descriptor"),
    (image(subject=descriptor("md5:x")), OCI_MANIFEST, "subject"),
])
def test_what_is_not_an_oci_or_docker_manifest_is_refused(content, media_type, problem):
    found = manifest_problem(content, media_type)
    assert found is not None and problem in found, found


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_only_sha256_and_sha512_digests_pass_in_every_descriptor(bad):
    for content, media_type in [(image(layer_digest=bad), OCI_MANIFEST), (image(config_digest=bad), OCI_MANIFEST),
                                (index(descriptor(bad, OCI_MANIFEST)), OCI_INDEX)]:
        found = manifest_problem(content, media_type)
        assert found is not None and "digest" in found, (bad, found)
        assert "\r" not in found and "\n" not in found  # shown escaped


@pytest.mark.parametrize("field,value", [
    ("mediaType", "application/json\r\nX-Evil: 1"), ("mediaType", "text/html; charset=utf-8"),
    ("mediaType", 7), ("artifactType", "a\x00/b"), ("size", -1), ("size", "10"), ("size", True),
    ("platform", {"os": ["linux"]}), ("platform", "linux/amd64"),
])
def test_descriptor_fields_are_checked(field, value):
    entry = {**descriptor(), field: value}
    found = descriptor_problem(entry, "layers[0]")
    assert found is not None and "layers[0]" in found and "\n" not in found, found


def test_a_referrers_answer_must_be_an_oci_index():
    assert [r.digest for r in parse_index(index(descriptor(SHA256, OCI_MANIFEST)))] == [SHA256]
    assert parse_index(index()) == []
    assert parse_index(b"<html></html>") is None
    assert parse_index(index(media_type=DOCKER_MANIFEST_LIST)) is None
    assert parse_index(b'{"schemaVersion":2,"manifests":{}}') is None
    # a descriptor that cannot be followed is dropped, the others stay
    both = index(descriptor("md5:d41d8cd98f00b204e9800998ecf8427e", OCI_MANIFEST), descriptor(SHA256, OCI_MANIFEST))
    assert [r.digest for r in parse_index(both)] == [SHA256]


# -- against the hostile upstream, through the real server ----------------------------------------


def _stored_manifests(regcache) -> int:
    return regcache.control.store.conn.execute("SELECT COUNT(*) FROM manifests").fetchone()[0]


def _error(answer) -> tuple[int, str, str]:
    error = answer.json()["errors"][0]
    return answer.status_code, error["code"], error["message"]


@pytest.mark.parametrize("declared,content", [
    ("text/html", b"<html><body>please log in</body></html>"),
    (OCI_MANIFEST, b"<html><body>please log in</body></html>"),
    (OCI_MANIFEST, image(media_type="text/html")),
    (OCI_MANIFEST, image(media_type=OCI_MANIFEST + "\r\nX-Evil: 1")),
    ("application/vnd.docker.distribution.manifest.v1+prettyjws", b'{"schemaVersion":1,"fsLayers":[]}'),
], ids=["html", "html-labelled-oci", "json-saying-html", "crlf-media-type", "schema-1"])
def test_an_upstream_manifest_that_is_not_an_oci_or_docker_one_is_refused(regcache, hostile, declared, content):
    hostile.manifests[("evil/app", "1")] = (declared, content)
    hostile.manifests[("evil/app", digest_of(content))] = (declared, content)
    with regcache.http() as http:
        by_tag = http.get("/v2/evil/app/manifests/1")
        by_digest = http.get(f"/v2/evil/app/manifests/{digest_of(content)}")
        head = http.head("/v2/evil/app/manifests/1")
    for answer in (by_tag, by_digest):
        status, code, message = _error(answer)
        assert (status, code) == (502, "UNKNOWN"), answer.text
        assert "does not store or serve" in message and "nothing was stored" in message
        assert answer.headers["content-type"] == "application/json"
    assert head.status_code == 502 and "x-evil" not in head.headers
    assert _stored_manifests(regcache) == 0


@pytest.mark.parametrize("where", ["layer", "config", "child"])
@pytest.mark.parametrize("bad", [BAD_DIGESTS[0], BAD_DIGESTS[1], "sha256:" + "A" * 64, "sha256:" + "a" * 60])
def test_weak_or_malformed_digests_in_an_upstream_manifest_are_refused(regcache, hostile, where, bad):
    content = (index(descriptor(bad, OCI_MANIFEST)) if where == "child" else
               image(layer_digest=bad) if where == "layer" else image(config_digest=bad))
    hostile.manifests[("evil/app", "1")] = (OCI_INDEX if where == "child" else OCI_MANIFEST, content)
    with regcache.http() as http:
        answer = http.get("/v2/evil/app/manifests/1")
    status, _, message = _error(answer)
    assert status == 502 and "only sha256 and sha512" in message, message
    assert _stored_manifests(regcache) == 0


@pytest.mark.parametrize("header", ["md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:" + "A" * 64, "sha256:abc",
                                    "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709"])
def test_a_docker_content_digest_that_is_not_sha256_or_sha512_is_refused(regcache, hostile, header):
    hostile.manifests[("evil/app", "1")] = (OCI_MANIFEST, image())
    hostile.manifest_headers[("evil/app", "1")] = [(b"docker-content-digest", header.encode())]
    with regcache.http() as http:
        answer = http.get("/v2/evil/app/manifests/1")
    status, _, message = _error(answer)
    assert status == 502 and "Docker-Content-Digest" in message and "not a sha256 or sha512" in message
    assert _stored_manifests(regcache) == 0


def test_a_sha512_docker_content_digest_is_verified(regcache, hostile):
    good, other = image(), image(layer_digest="sha256:" + "c" * 64)
    hostile.manifests[("evil/good", "1")] = (OCI_MANIFEST, good)
    hostile.manifest_headers[("evil/good", "1")] = [(b"docker-content-digest", digest_of(good, "sha512").encode())]
    hostile.manifests[("evil/liar", "1")] = (OCI_MANIFEST, other)
    hostile.manifest_headers[("evil/liar", "1")] = [(b"docker-content-digest", digest_of(good, "sha512").encode())]
    with regcache.http() as http:
        served = http.get("/v2/evil/good/manifests/1")
        lie = http.get("/v2/evil/liar/manifests/1")
    assert served.status_code == 200 and served.content == good
    assert served.headers["docker-content-digest"] == digest_of(good)
    assert _error(lie)[:2] == (502, "MANIFEST_INVALID")


def test_json_nested_beyond_the_parser_is_malformed_not_a_500(regcache, hostile):
    deep = b"[" * 100_000 + b"]" * 100_000
    hostile.manifests[("evil/app", "1")] = (OCI_MANIFEST, deep)
    hostile.tag_lists["evil/app"] = b'{"tags":' + deep + b"}"
    hostile.referrers["evil/app"] = (OCI_INDEX, b'{"manifests":' + deep + b"}")
    with regcache.http() as http:
        manifest = http.get("/v2/evil/app/manifests/1")
        tags = http.get("/v2/evil/app/tags/list")
        referrers = http.get(f"/v2/evil/app/referrers/{SHA256}")
    assert _error(manifest)[0] == 502 and "not JSON" in _error(manifest)[2]
    assert _error(tags)[0] == 502 and "not JSON" in _error(tags)[2]
    assert _error(referrers)[0] == 502 and "not an OCI image index" in _error(referrers)[2]
    assert _stored_manifests(regcache) == 0


def test_a_manifest_labelled_html_but_typed_by_its_content_is_served_as_its_type(regcache, hostile):
    hostile.manifests[("evil/app", "1")] = ("text/html", image())
    with regcache.http() as http:
        answer = http.get("/v2/evil/app/manifests/1")
    assert answer.status_code == 200 and answer.headers["content-type"] == OCI_MANIFEST


def test_a_stored_manifest_of_another_type_is_never_served_under_it(regcache, hostile):
    """A manifest kept before these checks existed, with a type that is not a manifest type, is not served."""
    content = b"<html>old</html>"
    digest = digest_of(content)
    source = f"anonymous/{hostile.host}/evil/app"
    store = regcache.control.store
    store.put_manifest(digest, "text/html", content)
    store.link("evil/app", source, digest, "manifest", "text/html")
    store.set_tag("evil/app", source, "old", digest)
    regcache.control.update_rule("evil-all", freshness=3600.0)  # the stored tag is served without asking
    with regcache.http() as http:
        for reference in ("old", digest):
            answer = http.get(f"/v2/evil/app/manifests/{reference}")
            assert answer.status_code == 502 and answer.headers["content-type"] == "application/json", answer.text
            assert "it is not served" in _error(answer)[2]


def test_tags_that_are_not_oci_tags_are_dropped_and_counted(regcache, hostile, caplog):
    listed = ["1.0", 2, None, {"a": 1}, ["x"], "bad\r\nX-Evil: 1", "-dash", "a" * 129, "", "ok_2", "sp ace", "é"]
    hostile.tag_lists["evil/app"] = json.dumps({"name": "evil/app", "tags": listed}).encode()
    with caplog.at_level(logging.WARNING, "regcache.upstream"), regcache.http() as http:
        everything = http.get("/v2/evil/app/tags/list")
        page = http.get("/v2/evil/app/tags/list?n=1&last=1.0")
    assert everything.status_code == 200 and everything.json()["tags"] == ["1.0", "ok_2"]
    assert page.status_code == 200 and page.json()["tags"] == ["ok_2"]
    assert [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()] == [
        f"upstream {hostile.host}: dropped 10 entries of the tag list of evil/app that are not valid OCI tags"] * 2


def test_a_tag_with_a_line_break_never_reaches_the_link_header(regcache, hostile):
    hostile.tag_lists["evil/app"] = b'{"name":"evil/app","tags":["1","2\\r\\nX-Evil: 1","3"]}'
    conn = http.client.HTTPConnection(regcache.host, timeout=30)
    try:
        for n in (1, 2):
            conn.request("GET", f"/v2/evil/app/tags/list?n={n}")
            response = conn.getresponse()  # a dropped connection raises here
            body = json.loads(response.read())
            assert response.status == 200 and "x-evil" not in {k.lower() for k, _ in response.getheaders()}
            assert body["tags"] == ["1", "3"][:n]
            assert response.getheader("link") == ('</v2/evil/app/tags/list?n=1&last=1>; rel="next"' if n == 1 else None)
    finally:
        conn.close()


def test_a_tag_list_whose_tags_are_not_a_list_is_an_error_not_a_500(regcache, hostile):
    hostile.tag_lists["evil/app"] = b'{"name":"evil/app","tags":"latest"}'
    with regcache.http() as http:
        answer = http.get("/v2/evil/app/tags/list")
    status, _, message = _error(answer)
    assert status == 502 and "not a list" in message


def test_a_tag_list_link_to_another_host_is_not_followed(regcache, hostile):
    elsewhere = HostileUpstream().start()
    try:
        elsewhere.tag_lists["evil/app"] = b'{"tags":["stolen"]}'
        hostile.tag_lists["evil/app"] = b'{"name":"evil/app","tags":["1"]}'
        hostile.tag_list_links["evil/app"] = f'<{elsewhere.url}/v2/evil/app/tags/list?last=1>; rel="next"'
        with regcache.http() as http:
            answer = http.get("/v2/evil/app/tags/list")
        status, _, message = _error(answer)
        assert status == 502 and "Link to another URL" in message
        assert elsewhere.requests == []
        hostile.tag_list_links["evil/app"] = '</v2/evil/other/tags/list?last=1>; rel="next"'
        with regcache.http() as http:
            assert http.get("/v2/evil/app/tags/list").status_code == 502
    finally:
        elsewhere.stop()


def test_a_tag_list_that_pages_on_and_on_is_bounded_in_size_and_time(regcache, hostile):
    page = json.dumps({"name": "evil/app", "tags": [f"t{i:07d}" for i in range(80_000)]}).encode()  # ~1 MiB
    hostile.tag_lists["evil/app"] = page
    hostile.tag_list_links["evil/app"] = '</v2/evil/app/tags/list?last=again>; rel="next"'  # and again
    with regcache.http() as http:
        answer = http.get("/v2/evil/app/tags/list")
    status, _, message = _error(answer)
    assert status == 502 and "all its pages together" in message and "list-max-size" in message
    assert 8 <= len(hostile.requests) <= 10  # 8 MiB of pages, not a thousand of them
    ok("--home", str(regcache.home), "settings", "set", "upstream-deadline", "2s")
    hostile.tag_lists["evil/app"] = b'{"tags":["1"]}'  # tiny pages, without end: the deadline covers them all
    started = time.monotonic()
    with regcache.http() as http:
        answer = http.get("/v2/evil/app/tags/list")
    took = time.monotonic() - started
    status, code, message = _error(answer)
    assert (status, code) == (503, "UNAVAILABLE") and "upstream-deadline" in message and took < 30, (message, took)


@pytest.mark.parametrize("media_type,body", [
    ("text/html", b"<html>referrers</html>"),
    (OCI_INDEX, b'{"schemaVersion":2,"mediaType":"text/html","manifests":[]}'),
    (OCI_INDEX, b'[1, 2]'),
], ids=["html", "other-media-type", "not-an-object"])
def test_a_referrers_answer_that_is_not_an_oci_index_is_refused(regcache, hostile, media_type, body):
    hostile.referrers["evil/app"] = (media_type, body)
    with regcache.http() as http:
        answer = http.get(f"/v2/evil/app/referrers/{SHA256}")
    status, _, message = _error(answer)
    assert status == 502 and "not an OCI image index" in message


@pytest.mark.parametrize("body", [
    index(descriptor("md5:d41d8cd98f00b204e9800998ecf8427e", OCI_MANIFEST)),
    index(descriptor(SHA256, "text/html\r\nX-Evil: 1")),
], ids=["md5-digest", "crlf-media-type"])
def test_a_referrer_that_cannot_be_followed_is_dropped(regcache, hostile, body):
    hostile.referrers["evil/app"] = (OCI_INDEX, body)
    with regcache.http() as http:
        answer = http.get(f"/v2/evil/app/referrers/{SHA256}")
    assert answer.status_code == 200 and answer.headers["content-type"] == OCI_INDEX
    assert answer.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def test_a_valid_referrers_index_is_served_as_an_oci_index_whatever_its_label(regcache, hostile):
    body = index(descriptor(SHA256, OCI_MANIFEST) | {"artifactType": "application/vnd.example.sbom"})
    hostile.referrers["evil/app"] = ("text/html", body)
    with regcache.http() as http:
        answer = http.get(f"/v2/evil/app/referrers/{SHA256}")
    assert answer.status_code == 200 and answer.json() == json.loads(body)
    assert answer.headers["content-type"] == OCI_INDEX


@pytest.mark.parametrize("target", [
    "/v2/evil/app/manifests/latest%0d%0aX-Evil:%201", "/v2/evil/app/manifests/latest%0a",
    "/v2/evil/app/manifests/lat%0best", f"/v2/evil/app/manifests/{SHA256}%0d%0a",
    f"/v2/evil/app/blobs/{SHA256}%0d%0aX-Evil:%201", f"/v2/evil/app/referrers/{SHA256}%0d%0a",
    "/v2/evil/app%0d%0a/tags/list", "/v2/evil/app/tags/list?last=%0d%0aX-Evil:%201",
    "/v2/evil/app/manifests/1?ns=%0d%0aX-Evil:%201", "/v2/evil/app/tags/list?n=1&last=a%0d%0a",
])
def test_a_client_reference_with_a_line_break_gets_an_oci_error_not_a_dropped_connection(regcache, hostile,
                                                                                         target):
    hostile.manifests[("evil/app", "1")] = (OCI_MANIFEST, image())
    hostile.tag_lists["evil/app"] = b'{"name":"evil/app","tags":["1","2"]}'
    conn = http.client.HTTPConnection(regcache.host, timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()  # a dropped connection raises here
        body = response.read()
        headers = {k.lower() for k, _ in response.getheaders()}
    finally:
        conn.close()
    assert "x-evil" not in headers
    if response.status == 200:  # a query value that is only compared, never echoed
        assert "tags/list" in target and "last=" in target
        return
    assert response.status in (400, 404), (response.status, body)
    assert json.loads(body)["errors"][0]["code"]


def test_served_manifests_carry_only_manifest_types(regcache, hostile):
    child = image()
    top = index(descriptor(digest_of(child), OCI_MANIFEST, len(child)) | {
        "platform": {"os": "linux", "architecture": "amd64"}})
    hostile.manifests[("evil/app", "1")] = ("application/json", top)
    hostile.manifests[("evil/app", digest_of(child))] = ("text/plain", child)
    with regcache.http() as http:
        listed = http.get("/v2/evil/app/manifests/1")
        negotiated = http.get("/v2/evil/app/manifests/1", headers={"Accept": OCI_MANIFEST})
    assert listed.headers["content-type"] == OCI_INDEX
    assert negotiated.status_code == 200 and negotiated.content == child
    assert negotiated.headers["content-type"] == OCI_MANIFEST
    assert {listed.headers["content-type"], negotiated.headers["content-type"]} <= set(MANIFEST_TYPES)
