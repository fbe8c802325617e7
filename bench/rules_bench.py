"""Rule-engine benchmark: validation and matching at the 1,000-rule limit, and `regcache cache list`.

Run: python bench/rules_bench.py   (targets: < 5 ms, < 20 us, < 300 ms)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.catalogue import UpstreamCatalogue
from regcache.proxy.core.models import CacheRule
from regcache.proxy.core.rules import MAX_RULES, RuleSet, check_new_rule

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def existing_rules() -> list[CacheRule]:
    """999 rules (the 1,000th is the one validated): static and wildcard, spread over upstreams."""
    rules = []
    for i in range(MAX_RULES - 1):
        if i % 3 == 0:
            rules.append(CacheRule(f"wild-{i:04d}", f"ghcr.io/org{i}/*", f"team{i}/*", None, T0 + timedelta(i)))
        else:
            rules.append(CacheRule(f"static-{i:04d}", f"quay.io/org{i}/app", f"apps/app{i}", None,
                                   T0 + timedelta(i)))
    return rules


def per_call(fn, repeat: int) -> float:
    """Median seconds per call over 5 runs of ``repeat`` calls."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        runs.append((time.perf_counter() - start) / repeat)
    return statistics.median(runs)


def main() -> None:
    rules = existing_rules()
    catalogue = UpstreamCatalogue()
    rule_set = RuleSet(rules)
    candidate = CacheRule("new-wildcard", "gcr.io/acme/*", "brand-new/*", None, T0 + timedelta(days=5000))

    validate = per_call(lambda: check_new_rule(candidate, RuleSet(rules), {}, catalogue), 50)
    names = [f"team{i}/sub/app" for i in range(0, 999, 3)] + [f"apps/app{i}" for i in range(1, 999, 3)] + [
        "nobody/matches/this"]
    match = per_call(lambda: [rule_set.match(n) for n in names], 20) / len(names)

    home = Path(tempfile.mkdtemp(prefix="regcache-bench-"))
    try:
        control = ControlPlane.open(home)
        with control.store.transaction():
            for rule in rules:
                control.store.insert_cache_rule(rule)
        start = time.perf_counter()
        control.create_rule("new-wildcard", "gcr.io/acme/*", "brand-new/*")
        create = time.perf_counter() - start
        control.close()

        exe = shutil.which("regcache") or str(Path(sys.executable).parent / "regcache")
        env = {**os.environ, "REGCACHE_HOME": str(home)}
        walls = []
        for _ in range(5):
            start = time.perf_counter()
            out = subprocess.run([exe, "cache", "list"], capture_output=True, env=env, check=True)
            walls.append(time.perf_counter() - start)
        assert out.stdout.count(b"\n") == MAX_RULES + 2
        wall = statistics.median(walls)
    finally:
        shutil.rmtree(home)

    print(f"validate one new rule against {MAX_RULES - 1} existing: {validate * 1e3:8.3f} ms   (target < 5 ms)")
    print(f"  ... and store it (transaction, {MAX_RULES - 1} rules read back): {create * 1e3:8.3f} ms")
    print(f"match a repository name against {MAX_RULES} rules:   {match * 1e6:8.3f} us   (target < 20 us)")
    print(f"`regcache cache list` as a process ({MAX_RULES} rules): {wall * 1e3:8.1f} ms   (target < 300 ms)")


if __name__ == "__main__":
    main()
