"""`regcache warm` and `regcache cache test` against a real upstream registry."""

from __future__ import annotations

import json

from click.testing import CliRunner

from regcache.tui.cli import main
from tests.helpers.state import cached_tag
from tests.registries.skopeo import assert_pulled


def run(home, *args: str):
    return CliRunner().invoke(main, ["--home", str(home), *args])


def test_warm_then_every_pull_is_a_hit(regcache, anonymous_registry, push_image, skopeo, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("warm-lib", f"{server}/library/*", "lib/*")
    image = push_image(anonymous_registry, "library/warmed", "1", layers=[2_000_000, 1_000], multiarch=True)
    result = run(regcache.home, "warm", "lib/warmed:1", "--platform", "linux/arm64")
    assert result.exit_code == 0, result.stderr
    arm = image.for_platform("linux/arm64/v8")
    assert f"{len(arm.blobs)} blobs, fetched" in result.stderr
    stored = regcache.server.app.state.registry.cache.blobs.backend.stored
    assert {b.digest for b in arm.blobs} == {d for d in image.blobs if stored(d)}

    before = anonymous_registry.count_blob_gets()
    layout = skopeo.run("copy", "--src-tls-verify=false", "--src-no-creds", "--override-arch", "arm64",
                        f"docker://{regcache.host}/lib/warmed:1", f"oci:{tmp_path / 'arm'}:1")
    assert layout.returncode == 0
    assert anonymous_registry.count_blob_gets() == before  # every blob came from the cache

    again = run(regcache.home, "warm", "lib/warmed:1", "--platform", "linux/arm64")
    assert "fetched 0 B from the upstream" in again.stderr

    missing = run(regcache.home, "warm", "lib/warmed:1", "--platform", "windows/amd64")
    assert missing.exit_code == 1
    assert "has no windows/amd64 image; it has: linux/amd64, linux/arm64/v8" in missing.stderr
    norule = run(regcache.home, "warm", "elsewhere/app:1")
    assert norule.exit_code == 1 and "no cache rule covers repository 'elsewhere/app'" in norule.stderr
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/lib/warmed:1", tmp_path / "all", "1", all_platforms=True),
                  "1", image)


def test_cache_test_reports_mapping_credentials_and_digest(regcache, basic_auth_registry, push_image):
    server = regcache.add_upstream(basic_auth_registry, auth="credentials")
    user, password = basic_auth_registry.credentials
    regcache.control.set_secret("keyring://regcache-tests/u", user)
    regcache.control.set_secret("keyring://regcache-tests/p", password)
    regcache.control.set_secret("keyring://regcache-tests/bad", "wrong")
    regcache.control.create_credential_set("good-creds", server, "keyring://regcache-tests/u",
                                           "keyring://regcache-tests/p")
    regcache.control.create_credential_set("bad-creds", server, "keyring://regcache-tests/u",
                                           "keyring://regcache-tests/bad")
    regcache.control.create_rule("team-good", f"{server}/acme/*", "team/*", "good-creds")
    regcache.control.create_rule("team-bad", f"{server}/acme/*", "badteam/*", "bad-creds")
    image = push_image(basic_auth_registry, "acme/api", "2.0", layers=[1_000])

    good = run(regcache.home, "cache", "test", "-n", "team-good", "--image", "team/api:2.0", "-o", "json")
    assert good.exit_code == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["upstreamReference"] == f"{server}/acme/api:2.0"
    assert report["credentialsValid"] is True and report["digest"] == image.digest
    assert report["cachedDigest"] is None
    assert cached_tag(regcache.control.store, "team/api", "2.0") is None  # nothing was cached

    bad = run(regcache.home, "cache", "test", "-n", "team-bad", "--image", "badteam/api:2.0", "-o", "json")
    assert bad.exit_code == 1
    assert json.loads(bad.stdout)["credentialsValid"] is False
    assert "refused the credentials of credential set 'bad-creds'" in bad.stderr
    assert "wrong" not in bad.stdout + bad.stderr

    outside = run(regcache.home, "cache", "test", "-n", "team-good", "--image", "other/api:2.0")
    assert outside.exit_code == 1 and "does not cover 'other/api'" in outside.stderr


def test_warm_reports_each_layers_bytes_rate_and_eta_and_counts_its_traffic(home, keyring_env, anonymous_registry,
                                                                             push_image):
    """A warm says where each layer is (bytes, rate, time left) as it goes, and records its pulls as events
    (the Activity log and the statistics count warm traffic as pull traffic), from the CLI's engine too."""
    from regcache.proxy.config.control import ControlPlane
    from regcache.proxy.jobs.operations import Operations
    from regcache.proxy.jobs.prefetch import WARM_CLIENT, WarmProgress
    from regcache.proxy.state.statistics import CacheStatistics

    from .fronts import THROTTLE, FaultyFront

    image = push_image(anonymous_registry, "library/slow", "1", layers=[3_000_000])
    front = FaultyFront(anonymous_registry.url, THROTTLE).start()  # ~0.25 s for the layer: several reports
    control = ControlPlane.open(home)
    try:
        control.add_upstream(front.host, front.url, "anonymous")
        control.create_rule("slow-lib", f"{front.host}/library/*", "lib/*")
        reports: list[WarmProgress] = []
        result = Operations.run_alone(home, None, lambda ops: ops.warm("lib/slow:1", on_progress=reports.append))
        again: list[WarmProgress] = []
        Operations.run_alone(home, None, lambda ops: ops.warm("lib/slow:1", on_progress=again.append))
        stats = CacheStatistics(control.store)
        events = [e.event for e in stats.latest_events(100)]
        totals = stats.totals()
    finally:
        control.close()
        front.stop()
    layer = image.layers[0]
    blobs = list(image.blobs.values())
    assert result.bytes_fetched == sum(len(b.data) for b in blobs)
    assert {lp.state for lp in reports[0].layers} == {"waiting"} and reports[0].total == result.bytes_fetched
    in_flight = [r for r in reports for lp in r.layers if lp.digest == layer.digest and lp.state == "fetching"
                 and 0 < lp.done < lp.size]
    assert in_flight, "no report while the layer was on its way"
    moving = next(lp for lp in in_flight[-1].layers if lp.digest == layer.digest)
    assert moving.rate and moving.rate > 0 and moving.eta is not None and moving.eta > 0
    assert in_flight[-1].eta is not None and 0 < in_flight[-1].done < in_flight[-1].total
    last = reports[-1]
    assert {lp.state for lp in last.layers} == {"fetched"} and last.done == last.total and last.eta == 0
    assert {lp.state for lp in again[-1].layers} == {"cached"}  # the second warm downloads nothing
    # the warms' pulls, as a client's would be: the manifest and every blob, a miss and then a hit
    assert {(e.client, e.user_agent, e.rule) for e in events} == {(WARM_CLIENT, "regcache-warm", "slow-lib")}
    pulled = [(e.reference, str(e.result)) for e in events if e.kind == "blob"]
    assert sorted(pulled) == sorted([(b.digest, "miss") for b in blobs] + [(b.digest, "hit") for b in blobs])
    assert totals.bytes_fetched == result.bytes_fetched and totals.hits == len(blobs) + 1


def test_warm_on_a_terminal_shows_each_layer_and_otherwise_one_summary(home, keyring_env, anonymous_registry,
                                                                        push_image):
    import os
    import pty
    import subprocess

    from regcache.proxy.config.control import ControlPlane
    from tests.helpers.commands import regcache_executable

    push_image(anonymous_registry, "library/piped", "1", layers=[500_000, 2_000])
    image = push_image(anonymous_registry, "library/shown", "1", layers=[500_000, 2_000])
    control = ControlPlane.open(home)
    try:
        control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
        control.create_rule("shown-lib", f"{anonymous_registry.host}/library/*", "lib/*")
    finally:
        control.close()
    piped = run(home, "warm", "lib/piped:1")  # not a terminal: the summary alone
    assert piped.exit_code == 0, piped.stderr
    assert piped.stderr.count("\n") == 1 and "\r" not in piped.stderr and "ETA" not in piped.stderr
    assert "from the upstream in " in piped.stderr and "/s), 0 B already cached" in piped.stderr
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([regcache_executable(), "--home", str(home), "warm", "lib/shown:1"],
                              stderr=secondary, stdout=subprocess.PIPE, env={**os.environ, **keyring_env}, timeout=60)
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0, shown
    lines = shown.decode().replace("\r\n", "\n").split("\n")
    for digest in image.blobs:  # a line kept for each blob once it is done
        short = digest[:19]
        assert any(line.rstrip().endswith("done") and short in line.split("\r")[-1] for line in lines), shown
    assert lines[-2].startswith("lib/shown@sha256:") and "fetched" in lines[-2]
