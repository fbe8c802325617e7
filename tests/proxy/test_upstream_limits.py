"""Bounds on what an upstream may send (issue: hostile upstreams): a manifest, a tag list or a token answer
over its size limit, or a call that drips past the deadline, is refused with an OCI error naming the
setting; nothing is stored, and memory stays bounded however much the upstream would send."""

from __future__ import annotations

import resource
import time

import pytest

from regcache.proxy.core.oci import OCI_MANIFEST
from tests.helpers.cli import ok
from tests.helpers.hostile_upstream import HostileUpstream

MiB = 1024 * 1024


@pytest.fixture
def hostile(regcache):
    upstream = HostileUpstream().start()
    regcache.control.add_upstream(upstream.host, upstream.url, "anonymous")
    regcache.control.create_rule("evil-all", f"{upstream.host}/evil/*", "evil/*")
    yield upstream
    upstream.stop()


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
    assert "larger than 4MiB" in message and "manifest-max-size" in message
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
    assert status == 502 and "larger than 8MiB" in message and "list-max-size" in message


def test_the_limits_are_settings(home, keyring_env):
    ok("settings", "set", "manifest-max-size", "8MiB")
    shown = ok("settings", "show", "-o", "json").stdout
    assert '"manifest-max-size"' in shown and "8MiB" in shown
    assert all(key in shown for key in ("list-max-size", "token-max-size", "upstream-deadline"))
