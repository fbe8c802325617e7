"""`regcache client-config`: the generated files, and skopeo pulling through the registries.conf mirrors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from regcache.tui.cli import main
from tests.registries.skopeo import OciLayout, assert_pulled


def run(home, *args: str):
    return CliRunner().invoke(main, ["--home", str(home), *args])


def test_registries_conf_mirrors_route_skopeo_through_regcache(regcache, anonymous_registry, push_image, skopeo,
                                                                tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("mirror-lib", f"{server}/library/*", "mirror/*")
    image = push_image(anonymous_registry, "library/mirrored", "1", layers=[50_000])
    out = tmp_path / "conf"
    result = run(regcache.home, "client-config", "podman", "--address", regcache.host, "-d", str(out))
    assert result.exit_code == 0, result.stderr
    conf = (out / "registries.conf").read_text()
    assert f'prefix = "{server}/library"' in conf and f'location = "{regcache.host}/mirror"' in conf

    def pull(dest: str) -> OciLayout:
        skopeo.run("--registries-conf", str(out / "registries.conf"), "copy", "--src-tls-verify=false",
                   "--src-no-creds", f"docker://{server}/library/mirrored:1", f"oci:{tmp_path / dest}:1")
        return OciLayout(tmp_path / dest)

    assert_pulled(pull("first"), "1", image)  # the client names the upstream; the mirror answers
    assert {e["repository"] for e in regcache.events()} == {"mirror/mirrored"}
    anonymous_registry.stop()
    assert_pulled(pull("offline"), "1", image)  # only regcache can answer now


def test_containerd_hosts_toml_and_docker_daemon_json(regcache, home):
    regcache.control.add_upstream("harbor.local:8443", "harbor.local:8443", "anonymous")
    regcache.control.create_rule("harbor-all", "harbor.local:8443/*", "harbor/*")
    regcache.control.create_rule("mcr-all", "mcr.microsoft.com/*", "mcr/*")
    printed = run(home, "client-config", "containerd", "--address", "cache.example:5000")
    assert printed.exit_code == 0
    assert "# --- harbor.local:8443/hosts.toml" in printed.stdout
    assert 'server = "https://harbor.local:8443"' in printed.stdout
    assert '[host."http://cache.example:5000"]\n  capabilities = ["pull", "resolve"]' in printed.stdout
    assert 'server = "https://mcr.microsoft.com"' in printed.stdout

    refused = run(home, "client-config", "docker")
    assert refused.exit_code == 1 and "need the registry-level rule * => docker.io/*" in refused.stderr
    for name in ("harbor-all", "mcr-all"):  # wildcards may not overlap the registry-level one
        regcache.control.delete_rule(name)
    regcache.control.create_credential_set("hub-creds", "docker.io", "env://U", "env://P")
    regcache.control.create_rule("docker-hub", "docker.io/*", "*", "hub-creds")
    daemon = run(home, "client-config", "docker", "--address", "cache.example:5000", "-d", str(home / "out"))
    assert daemon.exit_code == 0
    assert json.loads((home / "out" / "daemon.json").read_text()) == {
        "registry-mirrors": ["http://cache.example:5000"], "insecure-registries": ["cache.example:5000"]}
