"""Tag sync: filters, `regcache cache sync`, and the proxy's background sync."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.tagfilter import TagFilter
from regcache.tui.cli import main
from tests.helpers.state import cached_tag


@pytest.mark.parametrize(("spec", "tags", "expected"), [
    ("semver:>=1.2,<2", ["1.1", "1.2", "1.9.3", "2.0", "v1.5", "latest", "1.5-alpine"], ["1.2", "1.9.3", "v1.5"]),
    ("semver:~3.18", ["3.17", "3.18", "3.18.4", "3.19"], ["3.18", "3.18.4"]),
    ("semver:^1.2", ["1.1", "1.2", "1.99", "2.0"], ["1.2", "1.99"]),
    ("^3\\.", ["3.1", "13.1", "latest"], ["3.1"]),
    ("regex:-alpine$", ["1.0-alpine", "1.0"], ["1.0-alpine"]),
])
def test_filters(spec, tags, expected):
    f = TagFilter.parse(spec)
    assert [t for t in tags if f.matches(t)] == expected


@pytest.mark.parametrize(("spec", "words"), [("semver:>=banana", "is not a comparison"),
                                             ("regex:([", "not a valid regex"), ("", "empty")])
def test_bad_filters(spec, words):
    with pytest.raises(ValidationError, match=words):
        TagFilter.parse(spec)


def run(home, *args: str):
    return CliRunner().invoke(main, ["--home", str(home), *args])


def test_sync_fetches_new_and_moved_tags(regcache, anonymous_registry, push_image):
    server = regcache.add_upstream(anonymous_registry)
    for tag in ("1.0", "1.1", "2.0", "latest"):
        push_image(anonymous_registry, "library/synced", tag, layers=[5_000], seed=f"a-{tag}")
    created = run(regcache.home, "cache", "create", "-n", "synced-app", "-s", f"{server}/library/synced",
                  "-t", "synced", "--sync-tags", "semver:>=1.0,<2", "--sync-interval", "1h", "-o", "json")
    assert created.exit_code == 0, created.stderr
    assert json.loads(created.stdout)["syncTags"] == "semver:>=1.0,<2"

    first = run(regcache.home, "cache", "sync", "-n", "synced-app", "-o", "json")
    assert first.exit_code == 0, first.stderr
    (outcome,) = json.loads(first.stdout)
    assert (outcome["result"], outcome["fetched"]) == ("ok", 2)
    assert "2 of 4 tags match" in outcome["detail"]
    store = regcache.control.store
    assert cached_tag(store, "synced", "1.0") and cached_tag(store, "synced", "1.1")
    assert cached_tag(store, "synced", "2.0") is None and cached_tag(store, "synced", "latest") is None

    moved = push_image(anonymous_registry, "library/synced", "1.1", layers=[5_000], seed="b-1.1")
    push_image(anonymous_registry, "library/synced", "1.2", layers=[5_000], seed="a-1.2")
    second = json.loads(run(regcache.home, "cache", "sync", "-n", "synced-app", "-o", "json").stdout)
    assert second[0]["fetched"] == 2  # 1.1 moved, 1.2 is new
    assert cached_tag(store, "synced", "1.1") == moved.digest
    layer = moved.layers[0]
    assert regcache.server.app.state.registry.cache.blobs.backend.stored(layer.digest)  # the image, not just the tag

    anonymous_registry.stop()
    failed = run(regcache.home, "cache", "sync", "-n", "synced-app", "-o", "json")
    assert failed.exit_code == 1 and "tag sync failed for 1 repository" in failed.stderr
    assert "unavailable" in json.loads(failed.stdout)[0]["detail"]  # why: in its row, printed once
    assert store.tag_syncs("synced-app")[0].result == "error"


def test_background_sync_runs_in_the_proxy(home, keyring_env, anonymous_registry, push_image):
    from .conftest import start_regcache

    for tag in ("3.1", "3.2"):
        push_image(anonymous_registry, "library/bg", tag, layers=[1_000], seed=tag)
    rc = start_regcache(home)
    try:
        server = rc.add_upstream(anonymous_registry)
        rc.control.create_rule("bg-sync", f"{server}/library/bg", "bg", sync_tags="^3\\.")
        deadline = time.monotonic() + 30  # the proxy looks for due rules every 10 s
        while time.monotonic() < deadline and not rc.control.store.tag_syncs("bg-sync"):
            time.sleep(0.5)
        (row,) = rc.control.store.tag_syncs("bg-sync")
        assert row.result == "ok" and row.fetched == 2
    finally:
        rc.proxy.stop()
        rc.control.close()
