"""Eviction: max-size (least recently pulled first), per-rule retention, and `regcache gc`."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

from regcache.tui.cli import main
from tests.helpers.state import cached_tags
from tests.registries.skopeo import assert_pulled


def gc(home, *args: str) -> dict:
    result = CliRunner().invoke(main, ["--home", str(home), "gc", "--min-idle", "0", "-o", "json", *args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def pulled(regcache, skopeo, tmp_path, name: str):
    layout = skopeo.copy_to_oci(f"{regcache.host}/evict/{name}:1", tmp_path / name, "1")
    regcache.settle()  # stored, not only verified: eviction looks at what is stored
    return layout


def test_max_size_evicts_least_recently_pulled(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("evict-all", f"{server}/library/*", "evict/*")
    images = {name: push_image(anonymous_registry, f"library/{name}", "1", layers=[1_000_000])
              for name in ("old", "middle", "new")}
    for name in ("old", "middle", "new"):
        pulled(regcache, skopeo, tmp_path, name)
    blob_bytes = sum(b.size for image in images.values() for b in image.blobs.values())
    one_image = sum(b.size for b in images["old"].blobs.values())
    regcache.control.set_setting("max-size", str(blob_bytes - one_image // 2))

    plan = gc(regcache.home, "--dry-run")
    assert plan["dryRun"] and plan["bytesFreed"] >= one_image // 2
    evicted = {e["digest"] for e in plan["evicted"]}
    assert evicted and evicted <= set(images["old"].blobs)  # the least recently pulled image goes first
    assert all(regcache.server.app.state.registry.cache.blobs.backend.stored(d) for d in evicted)  # dry run

    done = gc(regcache.home)
    assert {e["digest"] for e in done["evicted"]} == evicted
    blobs = regcache.server.app.state.registry.cache.blobs
    assert not any(blobs.backend.stored(d) for d in evicted)
    assert done["cacheBytes"] - done["bytesFreed"] <= blob_bytes - one_image // 2
    # the evicted image is an ordinary miss again, fetched from the upstream
    before = anonymous_registry.count_blob_gets()
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/evict/old:1", tmp_path / "again", "1"), "1", images["old"])
    assert anonymous_registry.count_blob_gets() > before


def test_retention_expires_a_rules_repositories(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    # 3 s: room for a gc process on a loaded machine (1 s once failed the "pulled just now" check)
    regcache.control.create_rule("short-lived", f"{server}/library/*", "evict/*", retention=3)
    image = push_image(anonymous_registry, "library/brief", "1", layers=[10_000])
    pulled(regcache, skopeo, tmp_path, "brief")
    assert gc(regcache.home, "--dry-run")["evicted"] == []  # pulled just now
    time.sleep(3.2)
    done = gc(regcache.home)
    assert done["expiredRepositories"] == ["evict/brief"]
    assert {e["digest"] for e in done["evicted"]} == set(image.blobs)
    assert cached_tags(regcache.control.store, "evict/brief") == []


def test_a_client_reading_an_evicted_blob_finishes(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("evict-all", f"{server}/library/*", "evict/*")
    image = push_image(anonymous_registry, "library/reading", "1", layers=[8_000_000])
    pulled(regcache, skopeo, tmp_path, "reading")
    layer = image.layers[0]
    regcache.control.set_setting("max-size", "0")
    with regcache.http() as http:
        with http.stream("GET", f"/v2/evict/reading/blobs/{layer.digest}") as response:
            chunks = response.iter_raw(1 << 20)
            first = next(chunks)
            assert gc(regcache.home)["bytesFreed"] > 0  # evicted while the client reads it
            assert not regcache.server.app.state.registry.cache.blobs.backend.stored(layer.digest)
            body = first + b"".join(chunks)
    assert body == layer.data


def test_temporary_files_are_never_candidates(regcache):
    tmp = regcache.home / "blobs" / "tmp"
    (tmp / "12345-abcd-sha256-0000").write_bytes(b"x" * 1000)
    regcache.control.set_setting("max-size", "0")
    assert gc(regcache.home)["evicted"] == []
    assert (tmp / "12345-abcd-sha256-0000").exists()


def test_a_blob_stored_again_while_being_evicted_keeps_its_row(home):
    """The bucket's object is deleted before the row: a download finishing in between must keep its row."""
    from datetime import datetime, timezone

    from regcache.proxy.jobs.eviction import Evictor
    from regcache.proxy.state.store import StateStore

    store = StateStore(home)
    try:
        digest, path = "sha256:" + "d" * 64, "s3:regcache/blobs/sha256/dd/" + "d" * 64
        store.put_blob(digest, 100, path, datetime(2026, 1, 1, tzinfo=timezone.utc))
        store.set_setting("max-size", "10")
        plan = Evictor(store, min_idle=0).plan()
        assert [c.digest for c in plan.candidates] == [digest]
        store.put_blob(digest, 100, path)  # stored again meanwhile: a new download's upload
        Evictor(store, min_idle=0).apply(plan)
        assert digest in store.blob_usage()
        assert Evictor(store, min_idle=0).apply(Evictor(store, min_idle=0).plan()) == 100  # the next round
        assert digest not in store.blob_usage()
    finally:
        store.close()
