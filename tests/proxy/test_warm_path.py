"""The warm path: a hit reads what it learned for the current configuration version, notes its accesses for the
event writer, and still obeys every change another process makes on the very next request.

The trust model (docs/security.md) must hold with the checks kept in memory: a rule deleted, a token created,
narrowed or deleted, links purged, by the CLI (another process, on the same state directory), take effect on
the next request, not after some refresh interval.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time

import anyio
import pytest

from regcache.proxy.pull.known import KnownForVersion
from regcache.proxy.state.migrations import CONFIG_TABLES
from regcache.proxy.state.store import StateStore
from tests.helpers.commands import regcache_executable

PASSWORD = "Warm-Path-Token-7c2f01"


def cli(home, *args: str, stdin: str | None = None) -> str:
    """The real `regcache` command: another process, with a connection of its own to the state database."""
    run = subprocess.run([regcache_executable(), "--home", str(home), *args], input=stdin, capture_output=True,
                         text=True, timeout=60, env={**os.environ})
    assert run.returncode == 0, run.stderr
    return run.stdout


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.fixture
def warm_image(regcache, anonymous_registry, push_image):
    """team/app:1 pulled once through regcache (manifest by digest and its blobs are hits from now on)."""
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-rule", f"{server}/team/*", "team/*")
    image = push_image(anonymous_registry, "team/app", "1", layers=[4096])
    with regcache.http() as http:
        assert http.get(f"/v2/team/app/manifests/{image.digest}").status_code == 200
        for layer in image.layers:
            assert http.get(f"/v2/team/app/blobs/{layer.digest}").content == layer.data
    regcache.settle()
    return image


def results(regcache, reference: str) -> list[str]:
    return [e["result"] for e in regcache.events() if e["reference"] == reference]


def test_a_rule_or_token_change_by_another_process_takes_effect_on_the_very_next_request(regcache, warm_image):
    manifest = f"/v2/team/app/manifests/{warm_image.digest}"
    blob = f"/v2/team/app/blobs/{warm_image.layers[0].digest}"
    with regcache.http() as http:
        for _ in range(3):  # hits, answered from what the cache keeps for this configuration version
            assert http.get(manifest).status_code == 200 and http.get(blob).status_code == 200
        cli(regcache.home, "token", "create", "-n", "other-only", "--repository", "other/*", "--password-stdin",
            stdin=PASSWORD + "\n")
        assert http.get(manifest).status_code == 401
        assert http.get(blob).status_code == 401
        denied = http.get(manifest, headers=basic("other-only", PASSWORD))
        assert denied.status_code == 403 and denied.json()["errors"][0]["code"] == "DENIED"
        assert http.get(blob, headers=basic("other-only", PASSWORD)).status_code == 403
        cli(regcache.home, "token", "delete", "-n", "other-only", "-y")
        assert http.get(manifest).status_code == 200 and http.get(blob).status_code == 200
        cli(regcache.home, "cache", "delete", "-n", "team-rule", "-y")
        for path in (manifest, blob):
            gone = http.get(path)
            assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "NAME_UNKNOWN"
            assert http.head(path).status_code == 404


def test_links_purged_by_another_process_are_never_served_from_memory(regcache, warm_image):
    manifest = f"/v2/team/app/manifests/{warm_image.digest}"
    with regcache.http() as http:
        for _ in range(3):
            assert http.get(manifest).status_code == 200
        assert results(regcache, warm_image.digest)[-3:] == ["hit", "hit", "hit"]
        cli(regcache.home, "cache", "purge", "-r", "team/app", "-y")
        again = http.get(manifest)
    assert again.status_code == 200 and again.content == warm_image.manifest
    # the link went with the purge: the upstream had to send the bytes again (a miss), not the memory
    assert results(regcache, warm_image.digest)[-1] == "miss"


def test_every_pull_and_access_is_written_by_a_clean_stop(home, keyring_env, anonymous_registry,
                                                                     push_image):
    from tests.proxy.conftest import start_regcache

    rc = start_regcache(home)
    try:
        server = rc.add_upstream(anonymous_registry)
        rc.control.create_rule("team-rule", f"{server}/team/*", "team/*")
        image = push_image(anonymous_registry, "team/app", "1", layers=[4096])
        layer = image.layers[0].digest
        with rc.http() as http:
            for _ in range(25):
                assert http.get(f"/v2/team/app/manifests/{image.digest}").status_code == 200
                assert http.get(f"/v2/team/app/blobs/{layer}").status_code == 200
        last_request = time.time()
    finally:
        rc.proxy.stop()
        rc.control.close()
    store = StateStore(home)
    try:
        pulls = store.conn.execute("SELECT pulls FROM repositories WHERE name = 'team/app'").fetchall()
        last_access = store.conn.execute("SELECT last_access FROM blobs WHERE digest = ?", [layer]).fetchall()
    finally:
        store.close()
    assert pulls == [(25,)], "every pull is counted, none lost by the stop"
    from datetime import datetime

    assert datetime.fromisoformat(last_access[0][0]).timestamp() > last_request - 5, "the last hit's access time"


def test_warm_hits_read_and_write_nothing_on_a_worker_thread_but_the_event_batches(regcache, warm_image):
    """A warm manifest by digest and a warm small blob: no state read or write of their own (the configuration
    version is read on the event loop, the link and manifest are kept, accesses are noted for the writer)."""
    state = regcache.server.app.state.state_store
    calls: list[str] = []
    real_run = state.run

    async def counted(fn, *args):
        calls.append(getattr(fn, "__qualname__", repr(fn)))
        return await real_run(fn, *args)

    with regcache.http() as http:
        http.get(f"/v2/team/app/manifests/{warm_image.digest}")  # kept from here on
        http.get(f"/v2/team/app/blobs/{warm_image.layers[0].digest}")
        state.run = counted
        try:
            for _ in range(20):
                assert http.get(f"/v2/team/app/manifests/{warm_image.digest}").status_code == 200
                assert http.get(f"/v2/team/app/blobs/{warm_image.layers[0].digest}").status_code == 200
        finally:
            del state.run
    assert calls and all(name.startswith("EventLog._write") for name in calls), calls


def test_every_configuration_change_moves_the_version_and_bookkeeping_does_not(home):
    from datetime import datetime, timezone

    from regcache.proxy.config.control import ControlPlane

    control = ControlPlane.open(home)
    store = control.store
    try:
        seen = [store.config_version()]

        def moved() -> bool:
            seen.append(store.config_version())
            return seen[-1] > seen[-2]

        control.add_upstream("registry.test:5000", "http://127.0.0.1:9", "anonymous")
        assert moved()
        control.create_rule("team-rule", "registry.test:5000/team/*", "team/*")
        assert moved()
        control.set_setting("max-size", "1GiB")
        assert moved()
        control.create_token("ci-token", ["team/*"])
        assert moved()
        store.link("team/app", "anonymous/registry.test:5000/team/app", "sha256:" + "a" * 64, "blob")
        store.put_blob("sha256:" + "a" * 64, 10, "blobs/sha256/aa/" + "a" * 64)
        store.touch_blob("sha256:" + "a" * 64)
        store.touch_client_token("ci-token", datetime.now(timezone.utc))
        store.record_repository("team/app", "team-rule", "registry.test:5000/team/app")
        store.insert_events([{"ts": "2026-01-01T00:00:00+00:00", "client": "x", "method": "GET", "kind": "blob",
                              "result": "hit", "status": 200}])
        assert not moved(), "links added, accesses, last use and events are no configuration change"
        store.unlink("team/app", ["sha256:" + "a" * 64])
        assert moved(), "a removed link is"
        control.delete_token("ci-token")
        assert moved()
        control.delete_rule("team-rule")
        assert moved()
        triggers = {r[0] for r in store.conn.execute("SELECT tbl_name FROM sqlite_master WHERE type = 'trigger'")}
        assert set(CONFIG_TABLES) | {"client_tokens", "repository_contents"} <= triggers
    finally:
        control.close()


def test_known_facts_belong_to_one_version_and_are_bounded():
    known: KnownForVersion[str, bytes] = KnownForVersion(max_entries=3, max_bytes=1600)
    known.put("a", b"1", version=5, size=1)
    assert known.get("a", 5) == b"1"
    assert known.get("a", 6) is None, "a newer version knows nothing yet"
    known.put("b", b"2", version=4, size=1)
    assert known.get("b", 4) is None, "a slow request's older fact is not kept"
    known.put("c", b"3", version=6, size=1)
    assert known.get("a", 6) is None and known.get("c", 6) == b"3", "a newer version replaces the older facts"
    for key in "defg":
        known.put(key, b"x", version=6, size=1)
    assert len(known) == 3 and known.get("c", 6) is None, "at most max_entries, the least recently used go"
    known.put("big", b"x" * 200, version=6, size=200)
    assert known.get("big", 6) is None, "an answer over a sixteenth of the byte bound is not kept"


def test_the_first_burst_of_clients_for_a_blob_asks_the_state_once(regcache, warm_image):
    """64 connections opened at once after a start (nothing known yet) share one link check: the state answers
    one call at a time, and each asking on its own kept the last ones waiting up to 0.9 s (wrk's p99)."""
    from concurrent.futures import ThreadPoolExecutor

    cache = regcache.server.app.state.operations.cache
    state = regcache.server.app.state.state_store
    checks: list[str] = []
    real_run = state.run

    async def counted(fn, *args):
        if "_linked" in getattr(fn, "__qualname__", ""):
            checks.append(fn.__qualname__)
            await anyio.sleep(0.2)  # a busy state: the clients arriving meanwhile overlap this check
        return await real_run(fn, *args)

    cache._known_links.clear()  # as after a start or a configuration change
    layer = warm_image.layers[0]
    state.run = counted
    try:
        with regcache.http() as http, ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda _: http.get(f"/v2/team/app/blobs/{layer.digest}"), range(32)))
    finally:
        del state.run
    assert [a.status_code for a in answers] == [200] * 32 and all(a.content == layer.data for a in answers)
    assert 1 <= len(checks) < 8, checks  # one per burst that overlaps (not one per client)
