"""Rate-limit budgets: ratelimit-* headers recorded per credential set (or anonymous), 429s counted and served stale."""

from __future__ import annotations

import json

from click.testing import CliRunner

from regcache.tui.cli import main

from .fronts import FaultyFront


def test_budget_recorded_and_429_served_stale(regcache, anonymous_registry, push_image):
    push_image(anonymous_registry, "library/limited", "1", layers=[1_000])
    front = FaultyFront(anonymous_registry.url).start()
    try:
        front.extra_headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}
        regcache.control.add_upstream(front.host, front.url, "both")
        regcache.control.create_credential_set("front-creds", front.host, "env://REGCACHE_T_U", "env://REGCACHE_T_P")
        regcache.control.create_rule("anon-limited", f"{front.host}/library/limited", "limited")
        with regcache.http() as http:
            assert http.get("/v2/limited/manifests/1").status_code == 200
            front.extra_headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600"}
            front.manifest_status = 429
            stale = http.get("/v2/limited/manifests/1")
            assert stale.status_code == 200 and stale.headers["x-regcache-stale"] == "1"
        listed = CliRunner().invoke(main, ["--home", str(regcache.home), "upstream", "list", "-o", "json"])
        budget = next(u for u in json.loads(listed.stdout) if u["loginServer"] == front.host)["rateLimit"]
        assert (budget["limit"], budget["remaining"], budget["throttled"]) == ("100;w=21600", "0;w=21600", 1)
        shown = CliRunner().invoke(main, ["--home", str(regcache.home), "credential-set", "show", "-n",
                                          "front-creds", "-o", "json"])
        assert json.loads(shown.stdout)["rateLimit"] is None  # that set was never used
    finally:
        front.stop()
