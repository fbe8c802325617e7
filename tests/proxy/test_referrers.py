"""Referrers through regcache (OCI distribution-spec v1.1): from an upstream's referrers API, or from its
tag-scheme index when it has none (docker-registry 2.8), filtered by artifactType, kept per source and
served stale while the upstream is down; whatever an upstream sends, only a checked OCI index is answered."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from regcache.proxy.core.referrers import fallback_tag
from tests.helpers.referrers_registry import ReferrersRegistry, digest_of
from tests.registries.client import RegistryClient
from tests.registries.images import Blob

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = Blob("application/vnd.oci.empty.v1+json", b"{}")
SPDX = "application/spdx+json"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


def artifact(subject_digest: str, subject_size: int, artifact_type: str, layer: Blob) -> bytes:
    """An OCI artifact manifest (an SBOM, a signature) whose subject is the given manifest."""
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": EMPTY.descriptor(), "layers": [layer.descriptor()],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
        "annotations": {"org.opencontainers.image.created": "2026-11-30T00:00:00Z"},
    }).encode()


def _listed(answer) -> list[tuple[str, str | None]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == OCI_INDEX
    index = answer.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    return [(m["digest"], m.get("artifactType")) for m in index["manifests"]]


def test_referrers_by_the_tag_scheme_are_discovered_and_served_stale(regcache, anonymous_registry, push_image):
    image = push_image(anonymous_registry, "team/app", "1", layers=[1_000])
    sbom_layer = Blob(SPDX, b'{"spdxVersion":"SPDX-2.3","name":"app"}')
    sbom = artifact(image.digest, len(image.manifest), SPDX, sbom_layer)
    with RegistryClient.for_server(anonymous_registry) as client:
        for blob in (EMPTY, sbom_layer):
            client.push_blob("team/app", blob)
        sbom_digest = client.push_manifest("team/app", digest_of(sbom), OCI_MANIFEST, sbom)
        # the spec's fallback for registries without the API: an index tagged sha256-<hex> of the subject
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sbom_digest, "size": len(sbom), "artifactType": SPDX}]}).encode()
        client.push_manifest("team/app", fallback_tag(image.digest), OCI_INDEX, index)
    assert sbom_digest == digest_of(sbom)
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-rule", f"{server}/team/*", "team/*")

    with regcache.http() as http:
        # docker-registry 2.8 has no referrers API: it answers 404 there (clients would fall back themselves)
        assert http.get(f"{anonymous_registry.url}/v2/team/app/referrers/{image.digest}").status_code == 404
        assert _listed(http.get(f"/v2/team/app/referrers/{image.digest}")) == [(sbom_digest, SPDX)]
        wanted = http.get(f"/v2/team/app/referrers/{image.digest}", params={"artifactType": SPDX})
        assert _listed(wanted) == [(sbom_digest, SPDX)] and wanted.headers["oci-filters-applied"] == "artifactType"
        assert _listed(http.get(f"/v2/team/app/referrers/{image.digest}", params={"artifactType": SIGNATURE})) == []
        pulled = http.get(f"/v2/team/app/manifests/{sbom_digest}", headers={"Accept": OCI_MANIFEST})
        assert pulled.status_code == 200 and pulled.content == sbom
        assert http.get(f"/v2/team/app/blobs/{sbom_layer.digest}").content == sbom_layer.data

        anonymous_registry.stop()  # the upstream goes away: what was discovered stays discoverable
        stale = http.get(f"/v2/team/app/referrers/{image.digest}")
        assert _listed(stale) == [(sbom_digest, SPDX)] and stale.headers["x-regcache-stale"] == "1"
        assert http.get(f"/v2/team/app/manifests/{sbom_digest}", headers={"Accept": OCI_MANIFEST}).content == sbom
        # never discovered while the upstream was up: an error, not an empty index that says "none"
        other = "sha256:" + "1" * 64
        answer = http.get(f"/v2/team/app/referrers/{other}")
        assert answer.status_code == 503 and answer.json()["errors"][0]["code"] == "UNAVAILABLE"


def test_no_referrers_at_all_is_an_empty_index(regcache, anonymous_registry, push_image):
    image = push_image(anonymous_registry, "team/lonely", "1", layers=[500])
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-rule", f"{server}/team/*", "team/*")
    with regcache.http() as http:
        assert _listed(http.get(f"/v2/team/lonely/referrers/{image.digest}")) == []


@pytest.fixture
def api_registry(regcache):
    registry = ReferrersRegistry().start()
    regcache.control.add_upstream(registry.host, registry.url, "anonymous")
    regcache.control.create_rule("oras-rule", f"{registry.host}/oras/*", "oras/*")
    yield registry
    registry.stop()


def _subject_with_referrers(registry: ReferrersRegistry) -> tuple[str, str, str]:
    subject = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": EMPTY.descriptor(),
                          "layers": []}).encode()
    subject_digest = registry.put_manifest("oras/app", OCI_MANIFEST, subject, tag="1")
    registry.put_blob(EMPTY.data)
    sbom = registry.put_manifest("oras/app", OCI_MANIFEST, artifact(subject_digest, len(subject), SPDX,
                                                                    Blob(SPDX, b"{}")))
    signature = registry.put_manifest("oras/app", OCI_MANIFEST, artifact(subject_digest, len(subject), SIGNATURE,
                                                                         Blob(SIGNATURE, b"sig")))
    return subject_digest, sbom, signature


def test_referrers_from_the_upstream_api_filtered_and_stale(regcache, api_registry):
    subject, sbom, signature = _subject_with_referrers(api_registry)
    with regcache.http() as http:
        assert sorted(_listed(http.get(f"/v2/oras/app/referrers/{subject}"))) == sorted(
            [(sbom, SPDX), (signature, SIGNATURE)])
        filtered = http.get(f"/v2/oras/app/referrers/{subject}", params={"artifactType": SIGNATURE})
        assert _listed(filtered) == [(signature, SIGNATURE)]
        assert filtered.headers["oci-filters-applied"] == "artifactType"
        assert not any(path.endswith(fallback_tag(subject)) for _, path in api_registry.requests)
        api_registry.stop()
        stale = http.get(f"/v2/oras/app/referrers/{subject}", params={"artifactType": SPDX})
        assert _listed(stale) == [(sbom, SPDX)] and stale.headers["x-regcache-stale"] == "1"


def test_a_referrers_answer_that_is_not_an_index_is_refused(regcache, api_registry):
    subject, _, _ = _subject_with_referrers(api_registry)
    api_registry.answer = (200, "text/html", b"<html><script>alert(1)</script></html>")
    with regcache.http() as http:
        answer = http.get(f"/v2/oras/app/referrers/{subject}")
    assert answer.status_code == 502 and "not an OCI image index" in answer.json()["errors"][0]["message"]
    assert "<script>" not in answer.text


def test_malformed_descriptors_are_dropped_and_the_index_is_rebuilt(regcache, api_registry):
    subject, sbom, _ = _subject_with_referrers(api_registry)
    good = {"mediaType": OCI_MANIFEST, "digest": sbom, "size": 10, "artifactType": SPDX}
    hostile = [
        {**good, "digest": "md5:" + "0" * 32},  # an algorithm nobody can verify
        {**good, "digest": "SHA256:" + "A" * 64},
        {**good, "mediaType": "text/html\r\nX-Evil: 1"},  # a header injection attempt
        {**good, "size": -1},
        {**good, "size": "10"},
        {**good, "artifactType": "x" * 10_000},
        {**good, "annotations": {"k": "\x1b]52;c;aGk=\x07"}},  # an escape sequence for the operator's terminal
        "not a descriptor",
    ]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [good, *hostile],
                       "extra": "<b>ignored</b>"}).encode()
    api_registry.answer = (200, "text/html", body)
    with regcache.http() as http:
        answer = http.get(f"/v2/oras/app/referrers/{subject}")
    assert _listed(answer) == [(sbom, SPDX)]
    assert answer.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [good]}


def test_referrers_belong_to_their_source(regcache, api_registry):
    subject, sbom, _ = _subject_with_referrers(api_registry)
    regcache.control.create_rule("other-rule", f"{api_registry.host}/elsewhere/*", "elsewhere/*")
    with regcache.http() as http:
        assert len(_listed(http.get(f"/v2/oras/app/referrers/{subject}"))) == 2
        api_registry.stop()
        # another source never asked its upstream: nothing of oras/app's answer is served for it
        assert http.get(f"/v2/elsewhere/app/referrers/{subject}").status_code == 503


def test_oras_artifact_and_its_sbom_through_regcache(regcache, anonymous_registry, tmp_path):
    """The ORAS SDK pushes an artifact and an SBOM (its subject) to the upstream, the SBOM attached by the tag
    scheme; through regcache both are pulled with ORAS and the SBOM is discovered by the referrers endpoint
    (the SDK has no discover call: plain HTTP)."""
    import oras.oci
    import oras.provider

    (tmp_path / "app.txt").write_text("the artifact\n")
    (tmp_path / "sbom.spdx.json").write_text('{"spdxVersion": "SPDX-2.3"}\n')
    upstream = oras.provider.Registry(hostname=anonymous_registry.host, insecure=True)
    with _chdir(tmp_path):
        upstream.push(f"{anonymous_registry.host}/team/art:1", files=["app.txt:text/plain"], quiet=True)
    with RegistryClient.for_server(anonymous_registry) as client:
        artifact_bytes = client.get_manifest("team/art", "1", [OCI_MANIFEST]).content
        subject = oras.oci.Subject(OCI_MANIFEST, digest_of(artifact_bytes), len(artifact_bytes))
        with _chdir(tmp_path):
            upstream.push(f"{anonymous_registry.host}/team/art:sbom", files=[f"sbom.spdx.json:{SPDX}"],
                          subject=subject, quiet=True)
        sbom_bytes = client.get_manifest("team/art", "sbom", [OCI_MANIFEST]).content
        sbom_digest = digest_of(sbom_bytes)
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sbom_digest, "size": len(sbom_bytes)}]}).encode()
        client.push_manifest("team/art", fallback_tag(subject.digest), OCI_INDEX, index)
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-rule", f"{server}/team/*", "team/*")

    through = oras.provider.Registry(hostname=regcache.host, insecure=True)
    pulled = through.pull(target=f"{regcache.host}/team/art:1", outdir=str(tmp_path / "out"))
    assert [open(p).read() for p in pulled] == ["the artifact\n"]
    with regcache.http() as http:
        found = _listed(http.get(f"/v2/team/art/referrers/{subject.digest}"))
    assert [digest for digest, _ in found] == [sbom_digest]
    sbom = through.pull(target=f"{regcache.host}/team/art@{sbom_digest}", outdir=str(tmp_path / "sbom"))
    assert [open(p).read() for p in sbom] == ['{"spdxVersion": "SPDX-2.3"}\n']


@contextlib.contextmanager
def _chdir(path):
    """ORAS takes file names relative to the working directory."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
