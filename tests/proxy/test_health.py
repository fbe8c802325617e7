"""The readiness endpoint: unauthenticated, for load balancers and probes, revealing nothing."""

from __future__ import annotations

import httpx

from regcache.proxy.http.registry import HEALTH_PATH


def test_healthz_answers_without_a_token_or_a_loopback_host_and_says_nothing_else(regcache):
    regcache.control.create_token("ci-puller", ["*"])
    with regcache.http() as http:
        assert http.get("/v2/").status_code == 401  # tokens are required now
        ready = http.get(HEALTH_PATH, headers={"Host": "lb.example.internal"})
        assert ready.status_code == 200 and ready.json() == {"status": "ok"}
        assert ready.headers["cache-control"] == "no-store"
        assert http.head(HEALTH_PATH).status_code == 200
        # the Host check still guards everything else
        assert http.get("/v2/", headers={"Host": "lb.example.internal"}).status_code == 403


def test_healthz_from_regcache_serve(serve, home):
    process = serve()
    answer = httpx.get(f"{process.url}{HEALTH_PATH}")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}
