"""Purge: an operator removes a cached tag, digest or repository (e.g. after an upstream served bad content);
blobs no other repository links are deleted through the gc, shared ones stay, and the next pull is a miss."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from regcache.proxy.core.errors import NotFoundError, ValidationError
from regcache.proxy.jobs.operations import Operations
from regcache.tui.cli import main
from tests.helpers.state import cached_tag, cached_tags
from tests.registries.skopeo import assert_pulled


def purge(regcache, repository: str, tag: str | None = None, digest: str | None = None):
    regcache.settle()  # what the pulls before it verified is stored by now, so it is what the purge removes
    return regcache.proxy.call(lambda ops: ops.purge(repository, tag, digest))


def blob_stored(regcache, digest: str) -> bool:
    return regcache.server.app.state.registry.cache.blobs.backend.stored(digest)


def test_purging_a_tag_deletes_its_own_blobs_keeps_shared_ones_and_the_next_pull_refetches(
        regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("purge-all", f"{server}/library/*", "purge/*")
    shared = push_image(anonymous_registry, "library/shared", "1", layers=[20_000], seed="same")
    also = push_image(anonymous_registry, "library/also", "1", layers=[20_000], seed="same")  # the same blobs
    own = push_image(anonymous_registry, "library/shared", "2", layers=[30_000], seed="own")
    for repository, tag in (("shared", "1"), ("also", "1"), ("shared", "2")):
        skopeo.copy_to_oci(f"{regcache.host}/purge/{repository}:{tag}", tmp_path / f"{repository}-{tag}", tag)
    assert set(also.blobs) == set(shared.blobs)

    report = purge(regcache, "purge/shared", tag="2")
    assert report.purge.tags == ("2",)
    assert {digest for digest, *_ in report.purge.orphans} == set(own.blobs)
    assert report.blobs_deleted == len(own.blobs) and report.bytes_freed == sum(b.size for b in own.blobs.values())
    assert not any(blob_stored(regcache, d) for d in own.blobs)
    assert cached_tags(regcache.control.store, "purge/shared") == ["1"]
    assert regcache.control.store.manifest(own.digest) is None

    # a tag whose blobs another repository links: its tag and links go, the blobs stay for that repository
    report = purge(regcache, "purge/shared", tag="1")
    assert report.blobs_deleted == 0 and all(blob_stored(regcache, d) for d in shared.blobs)
    assert cached_tag(regcache.control.store, "purge/also", "1") == also.digest

    # the purged tag is a miss: fetched from the upstream again, and served whole
    before = anonymous_registry.count_blob_gets()
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/purge/shared:2", tmp_path / "again", "2"), "2", own)
    assert anonymous_registry.count_blob_gets() > before
    assert cached_tag(regcache.control.store, "purge/shared", "2") == own.digest


def test_purging_a_digest_or_a_whole_repository(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("purge-all", f"{server}/library/*", "purge/*")
    image = push_image(anonymous_registry, "library/multi", "1", layers=[10_000], multiarch=True)
    skopeo.copy_to_oci(f"{regcache.host}/purge/multi:1", tmp_path / "one", "1")
    store = regcache.control.store
    store.set_tag("purge/multi", "anonymous/other", "alias", image.digest)  # a second tag on the same index

    report = purge(regcache, "purge/multi", digest=image.digest)
    assert sorted(report.purge.tags) == ["1", "alias"]
    assert image.digest in report.purge.unlinked
    # each (source, tag) and (source, digest) removed, for the shared bucket's entries (filesystem: none there)
    source = f"anonymous/{server}/library/multi"
    assert sorted(report.purge.source_tags) == sorted([("anonymous/other", "alias"), (source, "1")])
    assert (source, image.digest) in report.purge.source_links
    assert {d for _, d in report.purge.source_links} == set(report.purge.unlinked)
    assert report.shared_removed == 0 and report.shared_error is None
    assert cached_tags(store, "purge/multi") == []
    assert store.manifest(image.digest) is None
    pulled_blobs = {d for d in image.blobs if store.blob(d) is not None}
    assert pulled_blobs == set()  # the platform skopeo pulled went with its index

    skopeo.copy_to_oci(f"{regcache.host}/purge/multi:1", tmp_path / "two", "1")
    report = purge(regcache, "purge/multi")
    assert report.purge.tags == ("1",) and report.blobs_deleted > 0
    assert not store.is_cached_repository("purge/multi")
    with pytest.raises(NotFoundError):
        purge(regcache, "purge/multi")


def test_purge_refuses_what_is_not_cached_and_bad_input(regcache):
    with pytest.raises(NotFoundError, match="not cached"):
        purge(regcache, "nothing/here")
    with pytest.raises(ValidationError, match="not both"):
        regcache.control.purge("x", tag="1", digest="sha256:" + "a" * 64)
    with pytest.raises(ValidationError, match="is not a digest"):
        regcache.control.purge("x", digest="md5:abc")


def test_cache_purge_command(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("purge-all", f"{server}/library/*", "purge/*")
    image = push_image(anonymous_registry, "library/cli", "1", layers=[5_000])
    skopeo.copy_to_oci(f"{regcache.host}/purge/cli:1", tmp_path / "cli", "1")
    regcache.settle()
    home = str(regcache.home)

    refused = CliRunner().invoke(main, ["--home", home, "cache", "purge", "--repository", "purge/cli", "--tag", "1"])
    assert refused.exit_code != 0 and "-y/--yes" in refused.stderr
    assert cached_tags(regcache.control.store, "purge/cli") == ["1"]
    both = CliRunner().invoke(main, ["--home", home, "cache", "purge", "-r", "purge/cli", "--tag", "1",
                                     "--digest", image.digest, "-y"])
    assert both.exit_code != 0 and "not both" in both.stderr

    done = CliRunner().invoke(main, ["--home", home, "cache", "purge", "-r", "purge/cli", "--tag", "1", "-y",
                                     "-o", "json"])
    assert done.exit_code == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["tags"] == ["1"] and record["blobsDeleted"] == len(image.blobs)
    assert "the next pull fetches from the upstream" in done.stderr
    assert cached_tags(regcache.control.store, "purge/cli") == []
    missing = CliRunner().invoke(main, ["--home", home, "cache", "purge", "-r", "purge/cli", "--tag", "1", "-y"])
    assert missing.exit_code == 1 and "purge/cli:1 is not cached" in missing.stderr


def test_operations_purge_alone(home, keyring_env):
    """Without a running proxy (the CLI, a TUI whose engine did not start) a purge runs on an engine of its own."""
    from regcache.proxy.config.control import ControlPlane

    control = ControlPlane.open(home)
    try:
        control.store.record_repository("solo/app", "rule", "example.test/solo/app")
        control.store.set_tag("solo/app", "anonymous/example.test/solo/app", "1", "sha256:" + "b" * 64)
        report = Operations.run_alone(home, None, lambda ops: ops.purge("solo/app", tag="1"))
        assert report.purge.tags == ("1",) and report.blobs_deleted == 0
        assert cached_tags(control.store, "solo/app") == []
    finally:
        control.close()
