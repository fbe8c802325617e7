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
            "+ cache rule all-mcr: * => mcr.microsoft.com/*; retention 30d",
            "+ cache rule harbor-app: app => harbor.local:8443/team/app; serve stale on error off"]
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
    assert done.exit_code == 0 and "applied 1 change" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("cacheRules: [{name: x}]")
    refused = runner.invoke(main, ["--home", str(home), "rules", "apply", "-f", str(bad), "--yes"])
    assert refused.exit_code == 1 and refused.stderr.startswith("error: cacheRules[0] is missing")


# -- the plan shows every change, secret ids included -----------------------------------------------

def test_a_changed_password_secret_id_is_shown_in_the_plan(control, home, tmp_path, monkeypatch):
    """A rules file pointing a credential set at another application's keyring entry is visible in review:
    ids old -> new, never the values behind them."""
    monkeypatch.setenv("HUB_TOKEN", "dckr_pat_THE-SECRET-VALUE")
    text = export_document(control).replace("passwordSecretId: env://HUB_TOKEN",
                                            "passwordSecretId: keyring://other-app/api-token")
    plan = [str(c) for c in plan_document(control, text)]
    assert plan == ["~ credential set hub-creds: password secret id env://HUB_TOKEN -> "
                    "keyring://other-app/api-token; a new access for cache rule(s) ubuntu"]
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    before = dump_database(home)
    dry = CliRunner().invoke(main, ["--home", str(home), "rules", "apply", "-f", str(path)])
    assert dry.exit_code == 0 and dry.stdout == plan[0] + "\n"
    assert "THE-SECRET-VALUE" not in dry.output and dump_database(home) == before
    apply_document(control, text)
    assert control.get_credential_set("hub-creds").password_secret_id == "keyring://other-app/api-token"


def test_a_plan_shows_what_a_new_set_and_rule_get_and_upstream_policy_changes(control):
    text = export_document(control).replace("authPolicy: both", "authPolicy: anonymous") + (
        "- name: team-app\n  sourceRepository: ghcr.io/acme/app\n  targetRepository: team/app\n"
        "  credentialSet: ghcr-creds\n  syncTags: semver:>=1\n")
    text = text.replace("cacheRules:\n", "- name: ghcr-creds\n  loginServer: ghcr.io\n"
                                         "  usernameSecretId: env://GH_USER\n  passwordSecretId: env://GH_TOKEN\n"
                                         "cacheRules:\n")
    assert [str(c) for c in plan_document(control, text)] == [
        "~ upstream harbor.local:8443: auth policy both -> anonymous",
        "+ credential set ghcr-creds: ghcr.io; username secret id env://GH_USER; password secret id env://GH_TOKEN",
        "+ cache rule team-app: team/app => ghcr.io/acme/app; credential set ghcr-creds; sync tags semver:>=1",
    ]


def test_a_built_in_upstreams_policy_cannot_change_silently(control):
    text = export_document(control).replace("url: http://127.0.0.1:5999",
                                            "url: http://127.0.0.1:5999\n  authPolicy: anonymous")
    with pytest.raises(ValidationError, match="docker.io is built in with the auth policy 'credentials'"):
        plan_document(control, text)


# -- hostile files: a clear error, bounded time and memory, nothing applied ---------------------------

FIELDS_OF_A_FILE = [("upstreams", "loginServer"), ("upstreams", "url"), ("upstreams", "authPolicy"),
                    ("credentialSets", "name"), ("credentialSets", "loginServer"),
                    ("credentialSets", "usernameSecretId"), ("credentialSets", "passwordSecretId"),
                    ("cacheRules", "name"), ("cacheRules", "sourceRepository"), ("cacheRules", "targetRepository"),
                    ("cacheRules", "credentialSet"), ("cacheRules", "freshness"), ("cacheRules", "retention"),
                    ("cacheRules", "syncTags"), ("cacheRules", "syncInterval")]
VALID_FILE = {
    "upstreams": [{"loginServer": "harbor.local:8443", "url": "https://harbor.local:8443", "authPolicy": "both"}],
    "credentialSets": [{"name": "hub-creds", "loginServer": "docker.io", "usernameSecretId": "env://HUB_USER",
                        "passwordSecretId": "env://HUB_TOKEN"}],
    "cacheRules": [{"name": "ubuntu", "sourceRepository": "docker.io/library/ubuntu", "targetRepository": "ubuntu",
                    "credentialSet": "hub-creds", "freshness": "10m", "retention": "30d", "syncTags": "^2",
                    "syncInterval": "1h"}],
}


@pytest.mark.parametrize("hostile", ["\\e[31m", "\\a", "\\t", "\\n", "\\x9b", "\\u202e", "\\u2066"])
@pytest.mark.parametrize(("section", "key"), FIELDS_OF_A_FILE, ids=lambda v: v)
def test_a_control_character_in_any_field_of_a_file_is_refused_by_place(control, home, section, key, hostile):
    import json

    doc = json.loads(json.dumps(VALID_FILE))
    doc[section][0][key] = "x" + "{HOSTILE}" + doc[section][0][key]
    text = json.dumps(doc).replace("{HOSTILE}", hostile)  # a YAML escape in a double-quoted (JSON) string
    before = dump_database(home)
    with pytest.raises(ValidationError) as info:
        apply_document(control, text)
    assert f"{section}[0].{key} contains the control character" in str(info.value)
    assert dump_database(home) == before


def billion_laughs(levels: int = 12) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE_FILES = {
    # libyaml stops at its own nesting limit; otherwise the depth check (before anything is built) does
    "10,000 [": ("[" * 10_000, ("more than 8 deep", "exceeded maximum nesting depth")),
    "10,000 { in a value": ("cacheRules: " + "{a: " * 10_000, "more than 8 deep"),
    "nested past the depth": ("cacheRules: " + "[" * 9 + "]" * 9, "more than 8 deep"),
    "billion laughs": (billion_laughs(), "anchor or alias at line 1"),
    "merge key": ("x: &x {name: abcde}\ncacheRules: [{<<: *x}]", "anchor or alias"),
    "a 5,000-digit number": ("cacheRules: " + "9" * 5000, "cannot be read"),
    "a key that is not text": ("cacheRules: [{1: a, name: b}]", "cacheRules[0] has a key that is not text"),
    "a section that is not text": ("{[1]: x}", "not valid YAML"),
    "an unknown key with an escape": ("cacheRules: [{\"\\e[2J\": a}]", "a key of cacheRules[0] contains"),
    "python object": ("cacheRules: !!python/object/apply:os.system ['true']", "not valid YAML"),
    "two documents": ("cacheRules: []\n---\ncacheRules: []\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_a_hostile_rules_file_is_refused_in_bounded_time_and_memory(control, home, name):
    import time
    import tracemalloc

    text, words = HOSTILE_FILES[name]
    before = dump_database(home)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ValidationError) as info:
            apply_document(control, text)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert any(w in str(info.value) for w in ((words,) if isinstance(words, str) else words)), str(info.value)
    assert elapsed < 10 and peak < 64 * 1024 * 1024  # wide margins: the machine is shared
    assert dump_database(home) == before


def test_a_file_over_the_size_limit_is_refused_naming_the_setting(control, home, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 100 + "\n" * 1 + ("# padding\n" * 110_000) + "cacheRules: []\n")
    assert big.stat().st_size > 1024 * 1024
    runner = CliRunner()
    refused = runner.invoke(main, ["--home", str(home), "rules", "apply", "-f", str(big)])
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: the rules file is larger than 1 MiB, the limit of the setting "
                                     "rules-file-max-size")
    with pytest.raises(ValidationError, match="rules-file-max-size"):
        plan_document(control, big.read_text())  # the limit holds for the TUI's text too
    assert runner.invoke(main, ["--home", str(home), "settings", "set", "rules-file-max-size", "4MiB"]).exit_code == 0
    planned = runner.invoke(main, ["--home", str(home), "rules", "apply", "-f", str(big)])
    assert planned.exit_code == 0 and "- cache rule ubuntu" in planned.stdout  # read, planned, not applied


def test_a_large_file_within_the_limit_parses_quickly(control):
    import time

    entries = "".join(f"- {{name: rule-{i:05d}, sourceRepository: ghcr.io/acme/app{i}, targetRepository: app{i}}}\n"
                      for i in range(11_500))
    text = "cacheRules:\n" + entries
    assert 900 * 1024 < len(text) < 1024 * 1024
    from regcache.proxy.config.declarative import parse_document

    started = time.monotonic()
    assert len(parse_document(text)["cacheRules"]) == 11_500
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(("content", "words"), [
    (b"cacheRules: [{name: caf\xe9}]\n", "not UTF-8 text (byte 24 cannot be decoded)"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 4, "binary (it contains NUL bytes)"),
    (b"\xff\xfe" + "cacheRules: []".encode("utf-16-le"), "binary"),
    (b"cacheRules: [{name: \"\x1b[31mred\"}]\n", "not valid YAML"),
])
def test_non_utf8_and_binary_files_are_one_clear_error(control, home, tmp_path, content, words):
    path = tmp_path / "rules.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["--home", str(home), "rules", "apply", "-f", str(path)])
    assert result.exit_code == 1 and words in result.stderr, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output and "\x1b" not in result.output
