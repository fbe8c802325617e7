"""The CLI as az users write it: `--query` (JMESPath) and `-o yaml` on every read, the ACR docs' commands as
they are, `cache show` with every setting and the rule's usage, errors naming flags and printed once."""

from __future__ import annotations

import json
import re
import resource
import time

import click
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from regcache.proxy.config.control import ControlPlane
from regcache.tui.cli.query import QUERY_MAX_LENGTH
from tests.helpers.cli import COMMANDS, cli, inputs, invocation, ok
from tests.helpers.state import dump_database

#: what a terminal would act on if printed raw
RAW = ("\x1b", "\x07", "\x9b", "\x85", "\u202e", "\u2066")


@pytest.fixture
def acr(home, keyring_env):
    """The configuration of the ACR artifact-cache docs (their names, with secret ids instead of Key Vault URIs)."""
    ok("credential-set", "create", "-n", "MyDockerHubCredSet", "-l", "docker.io",
       "-u", "env://REGCACHE_TEST_HUB_USER", "-p", "env://REGCACHE_TEST_HUB_TOKEN")
    ok("cache", "create", "-n", "MyRule", "-s", "docker.io/library/ubuntu", "-t", "ubuntu", "-c",
       "MyDockerHubCredSet")
    return home


# -- the ACR docs' commands, with their --query uses ----------------------------------------------------

def test_the_acr_docs_query_examples(acr):
    """`az acr cache show ... --query ... -o tsv` as the docs script it: the bare value, one line."""
    assert ok("cache", "show", "-n", "MyRule", "--query", "sourceRepository", "-o", "tsv").stdout == \
        "docker.io/library/ubuntu\n"
    assert ok("cache", "show", "-n", "MyRule", "--query", "credentialSetResourceId", "-o", "tsv").stdout == \
        "credentialSets/MyDockerHubCredSet\n"
    # PRINCIPAL_ID=$(az acr credential-set show -n MyDockerHubCredSet --query 'identity.principalId' -o tsv):
    # regcache has no managed identity, so the same script gets an empty value, not an error
    principal = ok("credential-set", "show", "-n", "MyDockerHubCredSet", "--query", "identity.principalId",
                   "-o", "tsv")
    assert principal.stdout == ""
    status = ok("credential-set", "show", "-n", "MyDockerHubCredSet", "--query",
                "authCredentials[0].credentialHealth.status", "-o", "tsv").stdout
    assert status.strip() == "Unknown"  # no login was tried yet: health is only what an upstream said
    # the docs' other commands, as written (without -r MyRegistry)
    ok("credential-set", "update", "-n", "MyDockerHubCredSet", "-p", "env://REGCACHE_TEST_NEW_TOKEN")
    ok("credential-set", "create", "-n", "NewCredSet", "-l", "docker.io", "-u", "env://U", "-p", "env://P")
    ok("cache", "update", "-n", "MyRule", "-c", "NewCredSet")
    assert ok("cache", "list", "--query", "[].credentialSetResourceId", "-o", "tsv").stdout == \
        "credentialSets/NewCredSet\n"
    assert ok("credential-set", "list", "--query", "[].name", "-o", "tsv").stdout.split() == [
        "MyDockerHubCredSet", "NewCredSet"]
    ok("cache", "delete", "-n", "MyRule", "-y")
    ok("credential-set", "delete", "-n", "MyDockerHubCredSet", "-y")
    assert ok("credential-set", "list", "--query", "length(@)", "-o", "tsv").stdout == "1\n"


def test_query_results_in_every_format(acr):
    ok("cache", "create", "-n", "team-app", "-s", "ghcr.io/acme/*", "-t", "team/*", "--sync-tags", "^1")
    query = "[].{name: name, target: targetRepository, sync: syncTags, stale: serveStaleOnError}"
    selected = json.loads(ok("cache", "list", "--query", query, "-o", "json").stdout)
    assert selected == [{"name": "MyRule", "target": "ubuntu", "sync": None, "stale": True},
                        {"name": "team-app", "target": "team/*", "sync": "^1", "stale": True}]
    assert yaml.safe_load(ok("cache", "list", "--query", query, "-o", "yaml").stdout) == selected
    assert ok("cache", "list", "--query", query, "-o", "tsv").stdout.splitlines() == [
        "MyRule\tubuntu\t\ttrue", "team-app\tteam/*\t^1\ttrue"]  # JSON's spellings: true, empty for null
    table = ok("cache", "list", "--query", query).stdout.splitlines()
    assert table[0].split() == ["NAME", "TARGET", "SYNC", "STALE"] and table[2].split() == ["MyRule", "ubuntu",
                                                                                           "true"]
    # a scalar: bare in TSV, under RESULT in a table; a list of lists: columns
    assert ok("cache", "list", "--query", "length(@)", "-o", "tsv").stdout == "2\n"
    assert ok("cache", "list", "--query", "length(@)").stdout.split() == ["RESULT", "------", "2"]
    assert ok("cache", "list", "--query", "[].[name, targetRepository]", "-o", "tsv").stdout.splitlines() == [
        "MyRule\tubuntu", "team-app\tteam/*"]
    assert ok("cache", "list", "--query", "[?name=='team-app'].name | [0]", "-o", "json").stdout == '"team-app"\n'
    # a filter that matches nothing: an empty list, exit 0
    assert ok("cache", "list", "--query", "[?name=='nope']", "-o", "json").stdout == "[]\n"


def test_every_read_takes_yaml_and_query(acr):
    """Every command with -o takes yaml and --query; each read's YAML is its JSON document, and --query `@`
    (the whole document) gives that same document."""
    with_output = [path for path, command in COMMANDS.items() if any(p.name == "fmt" for p in command.params)]
    assert {"cache list", "cache show", "credential-set list", "credential-set show", "upstream list", "token list",
            "settings show", "storage show", "gc"} <= set(with_output)
    for path in with_output:
        params = {p.name: p for p in COMMANDS[path].params}
        assert "query" in params, path
        assert "yaml" in params["fmt"].type.choices, path  # type: ignore[attr-defined]

    ok("token", "create", "-n", "ci-token", "--repository", "ubuntu")
    reads = [["cache", "list"], ["cache", "show", "-n", "MyRule"], ["credential-set", "list"],
             ["credential-set", "show", "-n", "MyDockerHubCredSet"], ["upstream", "list"], ["token", "list"],
             ["settings", "show"], ["storage", "show"], ["gc", "--dry-run"]]

    def without_check_times(value):  # credential-set show re-checks health: its time moves between runs
        if isinstance(value, dict):
            return {k: without_check_times(v) for k, v in value.items() if k != "checkedAt"}
        if isinstance(value, list):
            return [without_check_times(v) for v in value]
        return value

    for read in reads:
        as_json = without_check_times(json.loads(ok(*read, "-o", "json").stdout))
        as_yaml = without_check_times(yaml.safe_load(ok(*read, "-o", "yaml").stdout))
        queried = without_check_times(json.loads(ok(*read, "--query", "@", "-o", "json").stdout))
        assert as_yaml == as_json == queried, read


def test_a_bad_query_is_refused_before_the_command_changes_anything(acr):
    before = dump_database(acr)
    for query in ("name ==", "a b", "nosuch(@)", "", "[" * 50, "x" * (QUERY_MAX_LENGTH + 1), "name\x1b[2J",
                  "name\u202e"):
        result = cli("cache", "create", "-n", "other-rule", "-s", "ghcr.io/acme/other", "-t", "other",
                     "--query", query)
        assert result.exit_code == 2, (query, result.output)  # a usage error
        assert "--query" in result.stderr and "Traceback" not in result.output
        assert not any(char in result.output for char in RAW), repr(result.output)
    assert dump_database(acr) == before


@pytest.mark.parametrize(("query", "words"), [
    ("length(`5`)", "length() takes"),
    ("[0:1:0]", "slice step cannot be zero"),
    ("[0].name < `1`", None),  # Python cannot order a str and an int; JMESPath says null: either, one line
    ("ceil(`1e999`)", "cannot be evaluated"),
    ("length(@, @)", "cannot be evaluated"),
    ("[&name]", "expression reference (&...) where a value belongs"),  # found by the fuzz test below
])
def test_a_query_that_cannot_be_evaluated_is_one_line(acr, query, words):
    result = cli("cache", "list", "--query", query, "-o", "json")
    assert "Traceback" not in result.output
    if result.exit_code:
        line, = result.stderr.splitlines()
        assert line.startswith("error: --query")
        assert words is None or words in line, line


@pytest.mark.parametrize("query", [
    "@" + " | [@, @][]" * 60,  # a list that doubles at every pipe: 2^60 rules
    "@" + " | [@, @]" * 60 + " | to_string(@)",  # a result shared 2^60 times, serialised
    "{a: @" + " | [@, @]" * 40 + ", b: @" + " | [@, @]" * 40 + "} | a == b",  # two such values compared
    "[0].name" + " | join('', [@, @])" * 60,  # a string that doubles at every pipe
    "@" + " | [@, @]" * 60,  # printing it
])
def test_an_exploding_query_is_bounded_in_time_and_memory(acr, query):
    for i in range(20):
        ok("cache", "create", "-n", f"rule-{i:03d}", "-s", f"ghcr.io/acme/app{i}", "-t", f"app{i}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    result = cli("cache", "list", "--query", query, "-o", "json")
    took = time.monotonic() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: --query takes more than 1,000,000 steps") and \
        result.stderr.count("\n") == 1, result.stderr
    assert took < 30 and grown_mib < 256, (took, grown_mib)  # wide margins: a shared, loaded machine


def test_a_deeply_nested_result_is_refused(acr):
    query = "[" * 40 + "@" + "]" * 40 + " | " + "[" * 40 + "@" + "]" * 40  # 81 levels: over the 64 allowed
    result = cli("cache", "list", "--query", query, "-o", "yaml")
    assert result.exit_code == 1 and "nested deeper than 64 levels" in result.stderr


def test_stored_data_is_escaped_in_yaml_and_query_output(home, keyring_env):
    """Rows stored before configured strings were checked: every format, queried or not, shows them as text."""
    from regcache.proxy.core.models import CacheRule

    control = ControlPlane.open(home)
    try:
        control.store.insert_cache_rule(CacheRule("evil\x1b[31m-rule", "ghcr.io/a\u202epp", "[bold]app[/bold]",
                                                  sync_tags="^1\x9b\x07"))
    finally:
        control.close()
    for args in (["-o", "yaml"], ["--query", "[].[name, sourceRepository, syncTags]", "-o", "tsv"],
                 ["--query", "[].{n: name, s: sourceRepository}"], ["--query", "[0].name", "-o", "yaml"],
                 ["--query", "[0]", "-o", "yaml"]):
        result = ok("cache", "list", *args)
        assert not any(char in result.output for char in RAW), (args, repr(result.output))
        assert "[bold]app[/bold]" in result.output or "app" not in " ".join(args)
    loaded = yaml.safe_load(ok("cache", "list", "-o", "yaml").stdout)
    assert loaded[0]["name"] == "evil\x1b[31m-rule"  # escaped as YAML escapes, so it reads back exactly


# -- cache show: every setting and the usage -------------------------------------------------------------

def test_cache_show_lists_every_setting_and_the_usage(filled_backend):
    table = ok("cache", "show", "-n", "ubuntu").stdout
    rows = dict(line.split(None, 1) for line in table.splitlines()[2:])
    assert rows == {
        "name": "ubuntu", "source-repo": "docker.io/library/ubuntu", "target-repo": "ubuntu",
        "cred-set": "hub-creds", "created": "2026-03-14T09:00:53Z", "freshness": "0s", "retention": "none (keep)",
        "serve-stale": "on", "serve-stale-if-deleted": "off", "sync-tags": "semver:>=22.04", "sync-interval": "1h",
        "repositories": "1", "tags": "1", "size": "28 MiB", "hits": "2", "misses": "2",
        "last-pull": "2026-03-14T09:26:53Z",
    }
    usage = json.loads(ok("cache", "show", "-n", "ubuntu", "--query", "usage", "-o", "json").stdout)
    assert usage == {"repositories": 1, "tags": 1, "size": 29_360_128, "hits": 2, "misses": 2,
                     "lastPull": "2026-03-14T09:26:53Z"}
    assert ok("cache", "show", "-n", "ubuntu", "--query", "usage.hits", "-o", "tsv").stdout == "2\n"
    tsv = ok("cache", "show", "-n", "all-mcr", "-o", "tsv").stdout.splitlines()
    assert "cred-set\tnone" in tsv and "repositories\t0" in tsv and "last-pull\tnever" in tsv


def test_sync_tags_none_leaves_no_interval_behind(home, keyring_env):
    ok("cache", "create", "-n", "team-app", "-s", "ghcr.io/acme/*", "-t", "team/*", "--sync-tags", "^1",
       "--sync-interval", "2h")
    assert "syncInterval: 2h" in ok("rules", "export").stdout
    ok("cache", "update", "-n", "team-app", "--sync-tags", "none")
    exported = ok("rules", "export").stdout
    assert "syncTags" not in exported and "syncInterval" not in exported
    shown = json.loads(ok("cache", "show", "-n", "team-app", "-o", "json").stdout)
    assert (shown["syncTags"], shown["syncInterval"]) == (None, None)
    # the export applied to the cache it came from changes nothing
    plan = cli("rules", "apply", "-f", "-", input=exported)
    assert plan.exit_code == 0 and "no changes" in plan.stderr, plan.output


# -- errors: the flags' names, once ----------------------------------------------------------------------

def test_errors_name_the_flags_not_the_engines_fields(home, keyring_env):
    cases = [
        (["credential-set", "create", "-n", "hub-creds", "-l", "docker.io", "-u", "my-user", "-p", "env://P"],
         "--username-id must be a secret id"),
        (["credential-set", "create", "-n", "hub-creds", "-l", "docker.io", "-u", "env://U", "-p", "hunter2"],
         "--password-id must be a secret id"),
        (["credential-set", "create", "-n", "hub-creds", "-l", "docker.io", "-u", "env://U\x1b", "-p", "env://P"],
         "--username-id contains the control character U+001B (ESC)"),
        (["cache", "create", "-n", "my-app", "-s", "ghcr.io/a/b", "-t", "b", "--sync-interval", "a\x07"],
         "--sync-interval contains the control character"),
        (["settings", "set", "max-size", "a\x07"], "VALUE contains the control character"),
        (["gc", "--min-idle", "a\x07"], "--min-idle contains the control character"),
        # a message that names its input in words keeps them (not `--source-repo repository contains`)
        (["cache", "create", "-n", "my-app", "-s", "ghcr.io/a\x1b", "-t", "b"],
         "the source repository contains the control character"),
        (["token", "create", "-n", "my-token", "--repository", "*", "--password-stdin"],
         "the password has 5 characters"),
    ]
    for args, words in cases:
        result = cli(*args, input="short\n")
        line, = result.stderr.splitlines()
        assert result.exit_code == 1 and line.startswith(f"error: {words}"), line
        assert "_secret_id" not in line and "sync_interval" not in line


def test_no_error_names_an_engine_field(home, keyring_env, monkeypatch):
    """Every command, every input given a control character: the errors name options, never fields such as
    username_secret_id (a snake_case word is an engine name: options are --kebab-case, arguments UPPER)."""
    monkeypatch.setattr("regcache.tui.app.run_app", lambda *a, **k: None)
    control = ControlPlane.open(home)
    try:
        control.create_credential_set("hub-creds", "ghcr.io", "env://U", "env://P")
        control.create_rule("ubuntu-rule", "ghcr.io/acme/app", "app", "hub-creds")
    finally:
        control.close()
    snake = re.compile(r"(?<![\w/.:-])[a-z]+_[a-z_]+(?![\w/(-])")
    seen = []
    for path, command in COMMANDS.items():
        if path in ("serve", "storage set s3"):
            continue  # these start servers or reach a bucket on a base value; the sweep covers them
        for param in inputs(command):
            if isinstance(param.type, (click.Path, click.File)):
                continue
            result = cli(*invocation(path, command, param, "x\x1bx"), input="value\n")
            for line in result.stderr.splitlines():
                seen.append(line)
                assert not snake.search(line), (path, param.name, line)
    assert any("--username-id" in line for line in seen) and len(seen) > 40, seen


def test_cache_test_prints_its_error_once(home, keyring_env, basic_auth_registry, push_image):
    """A rule whose credentials a real registry refuses: the reason once, on stderr; the table has no copy."""
    control = ControlPlane.open(home)
    try:
        control.add_upstream(basic_auth_registry.host, basic_auth_registry.url, "credentials")
        control.create_credential_set("bad-creds", basic_auth_registry.host, "env://REGCACHE_TEST_BAD_USER",
                                      "env://REGCACHE_TEST_BAD_PASSWORD")
        control.create_rule("team-bad", f"{basic_auth_registry.host}/acme/*", "team/*", "bad-creds")
    finally:
        control.close()
    push_image(basic_auth_registry, "acme/api", "2.0", layers=[1_000])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REGCACHE_TEST_BAD_USER", "nobody")
        env.setenv("REGCACHE_TEST_BAD_PASSWORD", "wrong-password")
        for fmt in ("table", "tsv"):
            result = cli("cache", "test", "-n", "team-bad", "--image", "team/api:2.0", "-o", fmt)
            assert result.exit_code == 1
            line, = result.stderr.splitlines()
            assert "refused the credentials of credential set 'bad-creds'" in line
            reason = line.removeprefix("error: ")
            assert (result.stdout + result.stderr).count(reason) == 1
            assert "team/api" in result.stdout or "acme/api" in result.stdout  # the mapping is still shown
            assert "wrong-password" not in result.output


def test_cache_sync_names_the_failures_once(home, keyring_env):
    """A static rule whose upstream refuses connections: the reason in the row, the repositories on stderr."""
    control = ControlPlane.open(home)
    try:
        control.add_upstream("registry.example", "http://127.0.0.1:9")
        control.create_rule("app-rule", "registry.example/acme/app", "app", sync_tags="^1")
    finally:
        control.close()
    result = cli("cache", "sync", "-n", "app-rule", "-o", "tsv")
    assert result.exit_code == 1
    detail = result.stdout.split("\t")[-1].strip()
    assert detail and detail not in result.stderr
    assert result.stderr == "error: tag sync failed for 1 repository of 1: app (see the detail of each above)\n"


# -- the TUI is drawn only on a terminal ------------------------------------------------------------------

@pytest.fixture
def app_runs(monkeypatch):
    """run_app replaced by a recorder: what would have opened the TUI."""
    calls: list[dict] = []
    monkeypatch.setattr("regcache.tui.app.run_app", lambda **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize("args", [[], ["tui"]], ids=["regcache", "regcache tui"])
def test_no_tui_on_a_non_terminal(home, app_runs, args, monkeypatch):
    monkeypatch.delenv("REGCACHE_FORCE_TUI", raising=False)
    result = cli(*args)  # click's runner: stdout is not a terminal
    assert result.exit_code == 2 and result.stdout == ""
    line, = result.stderr.splitlines()
    assert line.startswith("error: standard output is not a terminal") and "regcache serve" in line
    assert app_runs == []
    assert cli("--force", *args).exit_code == 0 and len(app_runs) == 1
    if args:
        assert cli(*args, "--force").exit_code == 0 and len(app_runs) == 2
    monkeypatch.setenv("REGCACHE_FORCE_TUI", "1")
    assert cli(*args).exit_code == 0 and len(app_runs) == 3 - (not args)
    assert app_runs[-1]["listen"] == "127.0.0.1:5000"


def test_no_tui_from_the_installed_command_into_a_pipe(home):
    import os
    import subprocess

    from tests.helpers.commands import regcache_executable

    env = {k: v for k, v in os.environ.items() if k != "REGCACHE_FORCE_TUI"}
    result = subprocess.run([regcache_executable(), "--home", str(home)], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: standard output is not a terminal") and "\x1b" not in result.stderr


# -- defaults that match the proxy's ------------------------------------------------------------------------

def test_client_config_defaults_to_the_proxys_listen_address(home, keyring_env):
    from regcache.proxy.config.client_config import DEFAULT_ADDRESS, client_address
    from regcache.proxy.server import DEFAULT_LISTEN

    assert DEFAULT_ADDRESS == DEFAULT_LISTEN == "127.0.0.1:5000"
    ok("cache", "create", "-n", "team-app", "-s", "ghcr.io/acme/*", "-t", "team/*")
    files = ok("client-config", "podman").stdout
    assert 'location = "127.0.0.1:5000/team"' in files and "localhost" not in files
    assert client_address("0.0.0.0:5001") == "127.0.0.1:5001" and client_address("[::]:5001") == "127.0.0.1:5001"
    assert client_address("10.0.0.5:5000") == "10.0.0.5:5000"


def test_the_rules_file_is_proposed_beside_the_state_directory(tmp_path, monkeypatch):
    from pathlib import Path

    from regcache.tui.screens.config_files import default_rules_file

    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Path.home() == tmp_path / "user"
    assert default_rules_file(tmp_path / "srv" / "state") == tmp_path / "srv" / "regcache-rules.yaml"
    # the default state directory: its parent is hidden, so the home directory
    assert default_rules_file(tmp_path / "user" / ".local" / "share" / "regcache") == \
        tmp_path / "user" / "regcache-rules.yaml"


@pytest.mark.anyio
async def test_the_rules_file_dialog_ignores_the_working_directory(filled_backend, tmp_path, monkeypatch):
    from textual.widgets import Input, TextArea

    from regcache.tui.screens.config_files import RulesFileScreen
    from tests.helpers.pilot import wait_for
    from tests.tui.conftest import make_app

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    app = make_app(filled_backend)
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(RulesFileScreen())
        await wait_for(pilot, lambda: isinstance(app.screen, RulesFileScreen) and app.screen.query(TextArea))
        await wait_for(pilot, lambda: "cacheRules:" in app.screen.query_one(TextArea).text)  # its preview is in
        proposed = app.screen.query_one("#path", Input).value
    assert proposed == str(filled_backend.home.parent / "regcache-rules.yaml")
    assert "elsewhere" not in proposed


@pytest.fixture
def anyio_backend():
    return "asyncio"


# -- any expression: a result or one clear error, never an exception --------------------------------------

_TOKENS = ["@", "[]", "[*]", "[0]", "[-1]", "[0:2]", "[::-1]", "[?", "]", "name", "usage", "tags", ".", "|",
           "||", "&&", "!", "==", "!=", "<", ">=", "`1`", "`\"a\"`", "`null`", "`[1,[2]]`", "'x'", "{a:", "}",
           "[", ",", "(", ")", "length(", "sort_by(", "&name", "to_string(", "join(','", "max_by(", "keys(",
           "merge(", "ceil(", "abs(", "contains(", "values(", "*", " "]


@given(st.lists(st.sampled_from(_TOKENS), max_size=24).map("".join))
@settings(max_examples=400, deadline=None)
def test_any_expression_is_a_result_or_one_clear_error(expression):
    from regcache.proxy.core.errors import ValidationError
    from regcache.tui.cli.query import Query
    from regcache.tui.output import render_result

    document = [{"name": "a\x1b[2Jb", "usage": {"tags": 3, "hits": 1.5}, "tags": ["1", "2"], "on": True},
                {"name": "c", "usage": None, "tags": [], "on": False}]
    try:
        result = Query(expression).search(document)
    except ValidationError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("--query")
        return
    for fmt in ("table", "json", "yaml", "tsv"):
        assert "\x1b" not in render_result(result, fmt)
