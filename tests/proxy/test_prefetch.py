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
