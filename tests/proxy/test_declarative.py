"""Declarative rules files: export, dry-run plans, atomic apply, fleet round trip."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.config.declarative import apply_document, export_document, plan_document
from regcache.proxy.core.errors import ValidationError
from regcache.tui.cli import main
from tests.helpers.state import dump_database


@pytest.fixture
def control(home, keyring_env):
    control = ControlPlane.open(home)
    control.add_upstream("harbor.local:8443", "harbor.local:8443", "both")
    control.add_upstream("docker.io", "http://127.0.0.1:5999")
    control.create_credential_set("hub-creds", "docker.io", "env://HUB_USER", "env://HUB_TOKEN")
    control.create_rule("ubuntu", "docker.io/library/ubuntu", "ubuntu", "hub-creds", freshness=600)
    control.create_rule("all-mcr", "mcr.microsoft.com/*", "*", retention=30 * 86400)
    control.create_rule("harbor-app", "harbor.local:8443/team/app", "app", serve_stale_on_error=False)
    yield control
    control.close()


def test_round_trip_to_another_cache(control, tmp_path):
    text = export_document(control)
    assert "HUB_TOKEN" in text and "keyring" not in text  # secret ids, never values
    other = ControlPlane.open(tmp_path / "other")
    try:
        plan = plan_document(other, text)
        assert sorted(str(c) for c in plan if c.op == "+")[:2] == [
            "+ cache rule all-mcr: * => mcr.microsoft.com/*",
            "+ cache rule harbor-app: app => harbor.local:8443/team/app"]
        assert other.list_rules() == []  # a plan changes nothing
        apply_document(other, text)
        assert export_document(other) == text
        assert plan_document(other, text) == []
    finally:
        other.close()


def test_changes_and_deletions(control, home):
    text = export_document(control).replace("freshness: 10m", "freshness: 1h")
    text = text[:text.index("- name: harbor-app")]  # drop the last rule
    plan = [str(c) for c in plan_document(control, text)]
    assert plan == ["- cache rule harbor-app: app => harbor.local:8443/team/app",
                    "~ cache rule ubuntu: freshness 10m -> 1h"]
    apply_document(control, text)
    assert [r.name for r in control.list_rules()] == ["ubuntu", "all-mcr"]
    assert control.get_rule("ubuntu").freshness == 3600


def test_a_refused_change_applies_nothing(control, home):
    before = dump_database(home)
    text = export_document(control) + (
        "- name: lib-hub\n  sourceRepository: docker.io/library/*\n  targetRepository: library/*\n"
        "  credentialSet: hub-creds\n")
    text = text.replace("freshness: 10m", "freshness: 2h")
    with pytest.raises(ValidationError, match="overlaps the wildcard rule 'all-mcr'"):
        plan_document(control, text)
    with pytest.raises(ValidationError, match="overlaps the wildcard rule 'all-mcr'"):
        apply_document(control, text)
    assert dump_database(home) == before  # not even the freshness change went in


@pytest.mark.parametrize(("text", "words"), [
    ("cacheRules: [{name: x}]", "cacheRules[0] is missing sourceRepository, targetRepository"),
    ("cacheRules:\n- {name: abcde, sourceRepository: a/b, targetRepository: b, colour: red}", "unknown key(s) colour"),
    ("rules: []", "unknown section(s) rules"),
    ("cacheRules: [", "not valid YAML at line 1"),
    ("cacheRules:\n- {name: abcde, sourceRepository: ghcr.io/a/b, targetRepository: b}\n"
     "- {name: abcde, sourceRepository: ghcr.io/a/c, targetRepository: c}", "names abcde more than once"),
])
def test_malformed_files(control, text, words):
    with pytest.raises(ValidationError) as info:
        plan_document(control, text)
    assert words in str(info.value)


def test_cli_dry_run_then_yes(control, home, tmp_path):
    path = tmp_path / "rules.yaml"
    runner = CliRunner()
    assert runner.invoke(main, ["--home", str(home), "rules", "export", "-f", str(path)]).exit_code == 0
    path.write_text(path.read_text().replace("freshness: 10m", "freshness: 5m"))
    before = dump_database(home)
    dry = runner.invoke(main, ["--home", str(home), "rules", "apply", "-f", str(path)])
    assert dry.exit_code == 0 and dry.stdout == "~ cache rule ubuntu: freshness 10m -> 5m\n"
    assert "Run again with --yes" in dry.stderr and dump_database(home) == before
    done = runner.invoke(main, ["--home", str(home), "rules", "apply", "-f", str(path), "--yes"])
    assert done.exit_code == 0 and "applied 1 change(s)" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("cacheRules: [{name: x}]")
    refused = runner.invoke(main, ["--home", str(home), "rules", "apply", "-f", str(bad), "--yes"])
    assert refused.exit_code == 1 and refused.stderr.startswith("error: cacheRules[0] is missing")
