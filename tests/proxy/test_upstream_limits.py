"""Bounds on what an upstream may send (issue: hostile upstreams): a manifest, a tag list or a token answer
over its size limit, or a call that drips past the deadline, is refused with an OCI error naming the
setting; nothing is stored, and memory stays bounded however much the upstream would send."""

from __future__ import annotations

import hashlib
import resource
import time

import httpx
import pytest

from regcache.proxy.core.oci import OCI_MANIFEST
from tests.helpers.cli import ok

MiB = 1024 * 1024


def _error(answer) -> tuple[int, str, str]:
    error = answer.json()["errors"][0]
    return answer.status_code, error["code"], error["message"]


def _stored_manifests(regcache) -> int:
    return regcache.control.store.conn.execute("SELECT COUNT(*) FROM manifests").fetchone()[0]


def test_a_manifest_over_the_limit_is_refused_naming_the_setting(regcache, hostile):
    hostile.manifests[("evil/big", "1")] = (OCI_MANIFEST, b'{"schemaVersion":2,"pad":"' + b"x" * (5 * MiB) + b'"}')
    with regcache.http() as http:
        answer = http.get("/v2/evil/big/manifests/1")
    status, code, message = _error(answer)
    assert (status, code) == (502, "UNKNOWN")
    assert "larger than 4 MiB" in message and "manifest-max-size" in message
    assert _stored_manifests(regcache) == 0


def test_an_endless_manifest_is_cut_at_the_limit_with_bounded_memory(regcache, hostile):
    hostile.endless.add("evil/endless")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, this process (the proxy is in it)
    started = time.monotonic()
    with regcache.http() as http:
        answer = http.get("/v2/evil/endless/manifests/1", timeout=60)
    took = time.monotonic() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    status, _, message = _error(answer)
    assert status == 502 and "manifest-max-size" in message
    assert took < 10 and grown < 64, (took, grown)  # cut at 4 MiB, not read on and on
    assert _stored_manifests(regcache) == 0


def test_a_manifest_that_drips_meets_the_deadline(regcache, hostile):
    ok("--home", str(regcache.home), "settings", "set", "upstream-deadline", "2s")
    hostile.drip["evil/slow"] = 0.5
    started = time.monotonic()
    with regcache.http() as http:
        answer = http.get("/v2/evil/slow/manifests/1", timeout=60)
    took = time.monotonic() - started
    status, code, message = _error(answer)
    assert (status, code) == (503, "UNAVAILABLE")
    assert "within 2 s" in message and "upstream-deadline" in message
    assert took < 6, took


def test_a_tag_list_over_the_limit_is_refused(regcache, hostile):
    hostile.tag_lists["evil/many"] = b'{"name":"evil/many","tags":[' + b'"t",' * (3 * MiB) + b'"t"]}'
    with regcache.http() as http:
        answer = http.get("/v2/evil/many/tags/list", timeout=60)
    status, _, message = _error(answer)
    assert status == 502 and "larger than 8 MiB" in message and "list-max-size" in message


def test_the_limits_are_settings(home, keyring_env):
    ok("settings", "set", "manifest-max-size", "8MiB")
    shown = ok("settings", "show", "-o", "json").stdout
    assert '"manifest-max-size": "8 MiB"' in shown
    assert all(key in shown for key in ("list-max-size", "token-max-size", "upstream-deadline", "blob-max-size",
                                        "blob-min-rate", "blob-rate-window"))


# -- blobs: a size limit, and a minimum rate instead of a deadline ---------------------------------------------


def _zeros_digest(size: int) -> str:
    return "sha256:" + hashlib.sha256(bytes(size)).hexdigest()


def _nothing_kept(regcache) -> None:
    assert regcache.control.store.conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0
    assert list((regcache.home / "blobs" / "tmp").iterdir()) == []


def _last_blob_event(regcache) -> str:
    """The detail of the last blob event, once the event writer wrote it."""
    blobs = [e for e in regcache.events() if e["kind"] == "blob"]
    return (blobs[-1]["detail"] or "") if blobs else ""


def _wait_until_idle(regcache, seconds: float = 10) -> None:
    """Downloads run on after their client went; wait until the store has no temporary file left."""
    deadline = time.monotonic() + seconds
    while list((regcache.home / "blobs" / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_blob_announced_over_the_limit_is_refused_unread(regcache, hostile):
    ok("--home", str(regcache.home), "settings", "set", "blob-max-size", "8MiB")
    hostile.blob_announce = 9 * 1024**3  # says 9 GiB; nothing of it is read
    with regcache.http() as http:
        answer = http.get(f"/v2/evil/big/blobs/{_zeros_digest(hostile.blob_size)}", timeout=30)
    status, _, message = _error(answer)
    assert status == 502 and "larger than 8 MiB" in message and "blob-max-size" in message, message
    _nothing_kept(regcache)


def test_an_endless_blob_is_cut_at_the_limit_with_bounded_memory_and_disk(regcache, hostile):
    ok("--home", str(regcache.home), "settings", "set", "blob-max-size", "32MiB")
    hostile.endless_blobs.add("evil/endless")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with regcache.http() as http, pytest.raises(httpx.HTTPError):  # no size announced: the body is cut short
        with http.stream("GET", f"/v2/evil/endless/blobs/{_zeros_digest(1)}", timeout=60) as answer:
            for _ in answer.iter_bytes():
                pass
    _wait_until_idle(regcache)
    took = time.monotonic() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert took < 20 and grown < 96, (took, grown)
    _nothing_kept(regcache)
    assert "blob-max-size" in _last_blob_event(regcache)


def test_a_dripping_blob_is_cut_below_the_minimum_rate(regcache, hostile):
    for key, value in (("blob-min-rate", "64KiB"), ("blob-rate-window", "2s")):
        ok("--home", str(regcache.home), "settings", "set", key, value)
    hostile.blob_size, hostile.chunk, hostile.delay = 1024 * 1024, 1024, 0.2  # 5 KiB/s
    started = time.monotonic()
    with regcache.http() as http, pytest.raises(httpx.HTTPError):
        with http.stream("GET", f"/v2/evil/slow/blobs/{_zeros_digest(hostile.blob_size)}", timeout=60) as answer:
            for _ in answer.iter_bytes():
                pass
    took = time.monotonic() - started
    _wait_until_idle(regcache)
    assert took < 8, took  # one window, not the 200 s the upstream would take
    _nothing_kept(regcache)
    detail = _last_blob_event(regcache)
    assert "slower than 64 KiB/s over 2 s" in detail and "blob-min-rate" in detail, detail


def test_a_slow_blob_above_the_minimum_rate_completes(regcache, hostile):
    for key, value in (("blob-min-rate", "64KiB"), ("blob-rate-window", "1s")):
        ok("--home", str(regcache.home), "settings", "set", key, value)
    hostile.blob_size, hostile.chunk, hostile.delay = 1024 * 1024, 32 * 1024, 0.1  # ~320 KiB/s for ~3 windows
    digest = _zeros_digest(hostile.blob_size)
    with regcache.http() as http:
        answer = http.get(f"/v2/evil/slow/blobs/{digest}", timeout=60)
    assert answer.status_code == 200 and answer.content == bytes(hostile.blob_size)
    _wait_until_idle(regcache)
    assert regcache.control.store.conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 1


def test_a_blob_answer_that_does_not_start_within_the_window_is_unavailable(regcache, hostile):
    ok("--home", str(regcache.home), "settings", "set", "blob-rate-window", "1s")
    hostile.blob_header_delay = 5
    started = time.monotonic()
    with regcache.http() as http:
        answer = http.get(f"/v2/evil/late/blobs/{_zeros_digest(hostile.blob_size)}", timeout=30)
    status, code, message = _error(answer)
    assert (status, code) == (503, "UNAVAILABLE") and "blob-rate-window" in message, message
    assert time.monotonic() - started < 4
    _nothing_kept(regcache)
