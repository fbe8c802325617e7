"""The az-style CLI: every refusal is one line on stderr, a non-zero exit and an unchanged database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.rules import MAX_RULES
from regcache.tui.cli import main
from tests.helpers.cli import cli, ok
from tests.helpers.commands import regcache_executable
from tests.helpers.state import dump_database

HUB_USER = "hub-user-4e1f"
HUB_TOKEN = "dckr_pat_Zx9-SECRET-VALUE-51a7"
GH_TOKEN = "ghp_SECRET-GITHUB-TOKEN-0c3d"


@pytest.fixture
def configured(home, keyring_env):
    """Two credential sets with their secrets in the (test) keyring."""
    ok("secret", "set", "keyring://regcache/hub-user", input=HUB_USER + "\n")
    ok("secret", "set", "keyring://regcache/hub-token", input=HUB_TOKEN + "\n")
    ok("secret", "set", "keyring://regcache/gh-token", input=GH_TOKEN)
    ok("credential-set", "create", "-n", "hub-creds", "-l", "docker.io",
       "-u", "keyring://regcache/hub-user", "-p", "keyring://regcache/hub-token")
    ok("credential-set", "create", "-n", "ghcr-creds", "-l", "ghcr.io",
       "-u", "keyring://regcache/hub-user", "-p", "keyring://regcache/gh-token")
    return home


def seed_1000_rules(home: Path) -> None:
    control = ControlPlane.open(home)
    try:
        with control.store.transaction():
            from regcache.proxy.core.models import CacheRule

            for i in range(MAX_RULES):
                control.store.insert_cache_rule(CacheRule(f"rule-{i:04d}", f"ghcr.io/acme/app{i}", f"app{i}"))
    finally:
        control.close()


REFUSALS = [
    # (setup commands, refused command, words the error must contain)
    pytest.param([["cache", "create", "-n", "all-mcr", "-s", "mcr.microsoft.com/*", "-t", "*"]],
                 ["cache", "create", "-n", "lib-hub", "-s", "docker.io/library/*", "-t", "library/*", "-c",
                  "hub-creds"],
                 "overlaps the wildcard rule 'all-mcr'", id="library/* under *"),
    pytest.param([["cache", "create", "-n", "lib-mcr", "-s", "mcr.microsoft.com/library/*", "-t", "library/*"]],
                 ["cache", "create", "-n", "lib-dotnet", "-s", "docker.io/library/dotnet/*", "-t",
                  "library/dotnet/*", "-c", "hub-creds"],
                 "overlaps the wildcard rule 'lib-mcr'", id="library/dotnet/* under library/*"),
    pytest.param([["cache", "create", "-n", "lib-dotnet", "-s", "docker.io/library/dotnet/*", "-t",
                   "library/dotnet/*", "-c", "hub-creds"]],
                 ["cache", "create", "-n", "lib-mcr", "-s", "mcr.microsoft.com/library/*", "-t", "library/*"],
                 "overlaps the wildcard rule 'lib-dotnet'", id="library/* over library/dotnet/*"),
    pytest.param([["cache", "create", "-n", "ubuntu-one", "-s", "docker.io/ubuntu", "-t", "ubuntu", "-c",
                   "hub-creds"]],
                 ["cache", "create", "-n", "ubuntu-two", "-s", "ghcr.io/acme/ubuntu", "-t", "ubuntu"],
                 "'ubuntu' is already the target of rule 'ubuntu-one'", id="duplicate static target"),
    pytest.param([], ["cache", "create", "-n", "abc", "-s", "ghcr.io/a/b", "-t", "b"], "5 to 50 characters",
                 id="name too short"),
    pytest.param([], ["cache", "create", "-n", "a" * 51, "-s", "ghcr.io/a/b", "-t", "b"], "5 to 50 characters",
                 id="name too long"),
    pytest.param([], ["cache", "create", "-n", "my_rule!", "-s", "ghcr.io/a/b", "-t", "b"],
                 "only letters, digits and hyphens", id="name characters"),
    pytest.param([], ["cache", "create", "-n", "ubuntu", "-s", "docker.io/library/ubuntu:22.04", "-t", "ubuntu",
                      "-c", "hub-creds"], "must not carry a tag", id="source with tag"),
    pytest.param([], ["cache", "create", "-n", "ubuntu", "-s", "docker.io/library/ubuntu@sha256:" + "a" * 64,
                      "-t", "ubuntu", "-c", "hub-creds"], "must not carry a digest", id="source with digest"),
    pytest.param([], ["cache", "create", "-n", "my-rule", "-s", "registry.example.com/a/b", "-t", "b"],
                 "unknown login server 'registry.example.com'", id="unknown login server"),
    pytest.param([], ["cache", "create", "-n", "ubuntu", "-s", "docker.io/library/ubuntu", "-t", "ubuntu"],
                 "docker.io supports authenticated pulls only", id="docker.io without credential set"),
    pytest.param([], ["cache", "create", "-n", "dotnet", "-s", "mcr.microsoft.com/dotnet/sdk", "-t", "sdk", "-c",
                      "hub-creds"], "mcr.microsoft.com supports unauthenticated pulls only", id="mcr with one"),
    pytest.param([], ["cache", "create", "-n", "nginx", "-s", "public.ecr.aws/nginx/nginx", "-t", "nginx", "-c",
                      "hub-creds"], "public.ecr.aws supports unauthenticated pulls only", id="ecr with one"),
    pytest.param([], ["cache", "create", "-n", "my-app", "-s", "ghcr.io/acme/app", "-t", "app", "-c",
                      "hub-creds"], "'hub-creds' is for docker.io, but the rule's source is on ghcr.io",
                 id="credential set for another login server"),
    pytest.param([["cache", "create", "-n", "my-app", "-s", "ghcr.io/acme/app", "-t", "app"]],
                 ["cache", "update", "-n", "my-app"], "exactly one of", id="update with neither"),
    pytest.param([["cache", "create", "-n", "my-app", "-s", "ghcr.io/acme/app", "-t", "app"]],
                 ["cache", "update", "-n", "my-app", "-c", "ghcr-creds", "--remove-cred-set"], "exactly one of",
                 id="update with both"),
    pytest.param([["cache", "create", "-n", "ubuntu", "-s", "docker.io/library/ubuntu", "-t", "ubuntu", "-c",
                   "hub-creds"]],
                 ["cache", "update", "-n", "ubuntu", "--remove-cred-set"],
                 "docker.io supports authenticated pulls only", id="remove required credential set"),
    pytest.param([], ["cache", "update", "-n", "no-such-rule", "-c", "ghcr-creds"],
                 "cache rule 'no-such-rule' does not exist", id="update unknown rule"),
    pytest.param([["cache", "create", "-n", "ubuntu", "-s", "docker.io/library/ubuntu", "-t", "ubuntu", "-c",
                   "hub-creds"]],
                 ["credential-set", "delete", "-n", "hub-creds", "-y"],
                 "credential set 'hub-creds' is used by cache rule(s) ubuntu", id="delete used credential set"),
    pytest.param([], ["cache", "delete", "-n", "no-such-rule", "-y"], "cache rule 'no-such-rule' does not exist",
                 id="delete unknown rule"),
    pytest.param([["cache", "create", "-n", "my-app", "-s", "ghcr.io/acme/app", "-t", "app"]],
                 ["cache", "delete", "-n", "my-app"], "pass -y/--yes", id="delete without confirmation"),
    pytest.param([], ["credential-set", "create", "-n", "mcr-creds", "-l", "mcr.microsoft.com", "-u",
                      "env://U", "-p", "env://P"], "unauthenticated pulls only", id="credential set for mcr"),
    pytest.param([], ["credential-set", "create", "-n", "hub-creds", "-l", "docker.io", "-u", "env://U", "-p",
                      "env://P"], "named 'hub-creds' already exists", id="duplicate credential set"),
    pytest.param([], ["credential-set", "create", "-n", "bad-ids", "-l", "docker.io", "-u", "my-username", "-p",
                      "env://P"], "must be a secret id, keyring://SERVICE/NAME, env://VARIABLE or file:///PATH",
                 id="bad secret id"),
    pytest.param([], ["credential-set", "create", "-n", "nowhere", "-l", "nowhere.example", "-u", "env://U",
                      "-p", "env://P"], "unknown login server 'nowhere.example'", id="credential set unknown server"),
    pytest.param([], ["upstream", "remove", "--login-server", "ghcr.io"], "has no URL override",
                 id="remove built-in upstream"),
    pytest.param([], ["upstream", "add", "--login-server", "docker.io", "--url", "http://127.0.0.1:1", "--auth",
                      "anonymous"], "only its URL, allowed origins and CA bundle can be overridden",
                 id="change built-in policy"),
    pytest.param([], ["upstream", "add", "--login-server", "harbor.local", "--url", "ftp://harbor.local"],
                 "must use https://", id="upstream bad scheme"),
    pytest.param([["upstream", "add", "--login-server", "harbor.local:8443", "--url", "harbor.local:8443"],
                  ["cache", "create", "-n", "harbor-app", "-s", "harbor.local:8443/team/app", "-t", "app"]],
                 ["upstream", "remove", "--login-server", "harbor.local:8443"],
                 "is the source of cache rule(s) harbor-app", id="remove used upstream"),
    pytest.param([], ["secret", "set", "env://HUB_TOKEN"], "set HUB_TOKEN there instead", id="secret set env"),
]


@pytest.mark.parametrize(("setup", "command", "expected"), REFUSALS)
def test_refused_input_changes_nothing(configured, setup, command, expected):
    for step in setup:
        ok(*step)
    before = dump_database(configured)
    result = cli(*command, input="value\n")
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert dump_database(configured) == before


def test_the_1001st_rule_is_refused(configured):
    seed_1000_rules(configured)
    before = dump_database(configured)
    result = cli("cache", "create", "-n", "one-too-many", "-s", "ghcr.io/acme/extra", "-t", "extra")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: the cache-rule limit of 1,000 is reached; "
                                     "delete a rule before adding another")
    assert dump_database(configured) == before
    ok("cache", "delete", "-n", "rule-0000", "-y")
    ok("cache", "create", "-n", "one-more", "-s", "ghcr.io/acme/extra", "-t", "extra")


def test_rule_lifecycle_and_output_formats(configured):
    created = json.loads(ok("cache", "create", "-n", "MyRule", "-s", "docker.io/ubuntu", "-t", "ubuntu",
                            "-c", "hub-creds", "-o", "json").stdout)
    assert created["sourceRepository"] == "docker.io/library/ubuntu"  # Docker Hub library/ normalisation
    assert created["targetRepository"] == "ubuntu"
    assert created["credentialSetResourceId"] == "credentialSets/hub-creds"
    assert created["provisioningState"] == "Succeeded"
    assert created["creationDate"].endswith("Z")
    ok("cache", "create", "-n", "team-ghcr", "-s", "ghcr.io/acme/*", "-t", "team/*")

    shown = json.loads(ok("cache", "show", "-n", "MyRule", "-o", "json").stdout)
    assert shown.pop("usage") == {"repositories": 0, "tags": 0, "size": 0, "hits": 0, "misses": 0,
                                  "lastPull": None}  # beyond the list row: what the rule cached
    assert shown == created
    listed = json.loads(ok("cache", "list", "-o", "json").stdout)
    assert [r["name"] for r in listed] == ["MyRule", "team-ghcr"]

    tsv = ok("cache", "list", "-o", "tsv").stdout.splitlines()
    assert tsv[0].split("\t")[:4] == ["MyRule", "docker.io/library/ubuntu", "ubuntu", "hub-creds"]
    assert tsv[1].split("\t")[:4] == ["team-ghcr", "ghcr.io/acme/*", "team/*", ""]

    table = ok("cache", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "SOURCE", "REPOSITORY", "TARGET", "REPOSITORY", "CREDENTIAL", "SET",
                                "CREATED"]
    assert table[2].split()[:4] == ["MyRule", "docker.io/library/ubuntu", "ubuntu", "hub-creds"]

    updated = json.loads(ok("cache", "update", "-n", "team-ghcr", "-c", "ghcr-creds", "-o", "json").stdout)
    assert updated["credentialSetResourceId"] == "credentialSets/ghcr-creds"
    removed = json.loads(ok("cache", "update", "-n", "team-ghcr", "--remove-cred-set", "-o", "json").stdout)
    assert removed["credentialSetResourceId"] is None

    result = ok("cache", "delete", "-n", "MyRule", "-y")
    assert "deleted cache rule MyRule" in result.stderr
    assert [r["name"] for r in json.loads(ok("cache", "list", "-o", "json").stdout)] == ["team-ghcr"]
    # the credential set is free again
    ok("credential-set", "delete", "-n", "hub-creds", "-y")


def test_delete_asks_when_interactive(configured, monkeypatch):
    ok("cache", "create", "-n", "my-app", "-s", "ghcr.io/acme/app", "-t", "app")
    monkeypatch.setattr("regcache.tui.cli.common.interactive", lambda: True)
    declined = CliRunner().invoke(main, ["cache", "delete", "-n", "my-app"], input="n\n")
    assert declined.exit_code == 1 and "cancelled" in declined.stderr
    assert len(json.loads(ok("cache", "list", "-o", "json").stdout)) == 1
    accepted = CliRunner().invoke(main, ["cache", "delete", "-n", "my-app"], input="y\n")
    assert accepted.exit_code == 0
    assert json.loads(ok("cache", "list", "-o", "json").stdout) == []


def test_secret_prompt_does_not_echo(home, keyring_env, monkeypatch):
    monkeypatch.setattr("regcache.tui.cli.common.interactive", lambda: True)
    result = CliRunner().invoke(main, ["secret", "set", "keyring://regcache/tok"], input="pa55-value\npa55-value\n")
    assert result.exit_code == 0, result.stderr
    assert "pa55-value" not in result.output
    assert "Secret value" in result.stderr
    from regcache.proxy.secrets import SecretResolver

    assert SecretResolver().get("keyring://regcache/tok") == "pa55-value"


def test_credential_set_health(home, keyring_env):
    created = json.loads(ok("credential-set", "create", "-n", "hub-creds", "-l", "docker.io",
                            "-u", "keyring://regcache/u", "-p", "keyring://regcache/p", "-o", "json").stdout)
    assert created["loginServer"] == "docker.io"
    # the health is the last upstream login: none yet; whether this shell can read the secrets is apart
    health = created["authCredentials"][0]["credentialHealth"]
    assert (health["status"], health["errorCode"], health["checkedAt"]) == ("Unknown", None, None)
    access = created["authCredentials"][0]["secretAccess"]
    assert created["secretsReadable"] == "no"
    assert access["username"]["errorCode"] == "SecretNotFound"
    assert "keyring://regcache/u" in access["username"]["reason"]
    ok("secret", "set", "keyring://regcache/u", input="someone\n")
    ok("secret", "set", "keyring://regcache/p", input="pa55word\n")
    shown = json.loads(ok("credential-set", "show", "-n", "hub-creds", "-o", "json").stdout)
    assert shown["authCredentials"][0]["credentialHealth"]["status"] == "Unknown"  # reading logs in nowhere
    assert shown["secretsReadable"] == "yes"
    assert shown["authCredentials"][0]["secretAccess"]["password"] == {"readable": True, "reason": "readable",
                                                                       "errorCode": None}
    assert shown["authCredentials"][0]["usernameSecretIdentifier"] == "keyring://regcache/u"
    listed = ok("credential-set", "list").stdout
    assert "hub-creds" in listed and "Unknown" in listed and "SECRETS READABLE HERE" in listed
    updated = cli("credential-set", "update", "-n", "hub-creds", "-p", "env://REGCACHE_TEST_NOPE", "-o", "json")
    assert updated.exit_code == 0
    assert "warning: this process cannot read the password of credential set hub-creds" in updated.stderr
    updated = json.loads(updated.stdout)
    assert updated["authCredentials"][0]["passwordSecretIdentifier"] == "env://REGCACHE_TEST_NOPE"
    assert updated["authCredentials"][0]["secretAccess"]["password"]["errorCode"] == "SecretNotFound"


def test_secrets_never_reach_the_database_or_output(configured):
    outputs = []
    outputs.append(ok("cache", "create", "-n", "ubuntu", "-s", "docker.io/library/ubuntu", "-t", "ubuntu",
                      "-c", "hub-creds", "-o", "json"))
    for fmt in ("table", "json", "tsv"):
        outputs.append(ok("credential-set", "list", "-o", fmt))
        outputs.append(ok("credential-set", "show", "-n", "hub-creds", "-o", fmt))
        outputs.append(ok("cache", "list", "-o", fmt))
    outputs.append(ok("credential-set", "update", "-n", "ghcr-creds", "-u", "keyring://regcache/hub-user"))
    # the secrets really are usable (show reads them from the keyring) ...
    shown = ok("credential-set", "show", "-n", "hub-creds", "-o", "json")
    outputs.append(shown)
    assert json.loads(shown.stdout)["secretsReadable"] == "yes"
    # ... but appear in no output and in no file of the state directory (database, WAL, shared memory)
    state_files = [p for p in configured.rglob("*") if p.is_file()]
    assert any(p.name == "state.db" for p in state_files)
    for secret in (HUB_USER, HUB_TOKEN, GH_TOKEN):
        for result in outputs:
            assert secret not in result.stdout and secret not in result.stderr
        for path in state_files:
            assert secret.encode() not in path.read_bytes(), path


def test_state_db_and_wal_hold_no_secret_while_open(configured):
    """Checked while a connection is still open, so the WAL has not been checkpointed away."""
    control = ControlPlane.open(configured)
    try:
        control.create_rule("ubuntu", "docker.io/library/ubuntu", "ubuntu", "hub-creds")
        control.refresh_credential_set("hub-creds")
        wal = configured / "state.db-wal"
        assert wal.exists() and wal.stat().st_size > 0
        for path in (configured / "state.db", wal):
            data = path.read_bytes()
            for secret in (HUB_USER, HUB_TOKEN, GH_TOKEN):
                assert secret.encode() not in data
    finally:
        control.close()


def test_missing_keyring_backend_is_a_clear_error(home, no_keyring):
    result = cli("secret", "set", "keyring://regcache/token", input="value\n")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    line, = result.stderr.splitlines()
    assert line.startswith("error: no usable keyring backend on this host")
    assert "PYTHON_KEYRING_BACKEND" in line
    created = ok("credential-set", "create", "-n", "hub-creds", "-l", "docker.io", "-u",
                 "keyring://regcache/u", "-p", "keyring://regcache/p", "-o", "json")
    assert json.loads(created.stdout)["authCredentials"][0]["secretAccess"]["username"]["errorCode"] == \
        "KeyringUnavailable"
    assert created.stderr.startswith("warning: this process cannot read the username of credential set hub-creds: "
                                     "no usable keyring backend")


def test_upstreams(home):
    listed = json.loads(ok("upstream", "list", "-o", "json").stdout)
    assert {u["loginServer"] for u in listed} == {"docker.io", "mcr.microsoft.com", "public.ecr.aws", "ghcr.io",
                                                  "quay.io", "registry.k8s.io", "gcr.io"}
    hub = next(u for u in listed if u["loginServer"] == "docker.io")
    assert hub["authPolicy"] == "credentials" and hub["url"] == "https://registry-1.docker.io"

    override = json.loads(ok("upstream", "add", "--login-server", "docker.io", "--url", "http://127.0.0.1:5999",
                             "-o", "json").stdout)
    assert override["url"] == "http://127.0.0.1:5999"
    assert override["defaultUrl"] == "https://registry-1.docker.io"
    assert override["authPolicy"] == "credentials"

    custom = json.loads(ok("upstream", "add", "--login-server", "Harbor.Local:8443", "--url", "harbor.local:8443",
                           "--auth", "anonymous", "-o", "json").stdout)
    assert custom == {"loginServer": "harbor.local:8443", "url": "https://harbor.local:8443",
                      "authPolicy": "anonymous", "builtIn": False, "defaultUrl": None, "title": "custom",
                      "allowedOrigins": [], "caBundle": None, "rateLimit": None}
    ok("cache", "create", "-n", "harbor-app", "-s", "harbor.local:8443/team/app", "-t", "app")
    assert "built-in, URL overridden" in ok("upstream", "list").stdout

    ok("cache", "delete", "-n", "harbor-app", "-y")
    ok("upstream", "remove", "--login-server", "harbor.local:8443")
    ok("upstream", "remove", "--login-server", "docker.io")
    hub = next(u for u in json.loads(ok("upstream", "list", "-o", "json").stdout) if u["loginServer"] == "docker.io")
    assert hub["url"] == "https://registry-1.docker.io" and hub["defaultUrl"] is None


def test_installed_command_as_a_subprocess(home, keyring_env):
    exe = regcache_executable()
    env = {**os.environ, **keyring_env, "REGCACHE_HOME": str(home)}

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], input=input, capture_output=True, text=True, env=env, timeout=60)

    stored = run("secret", "set", "keyring://regcache/hub-token", input=HUB_TOKEN + "\n")
    assert stored.returncode == 0, stored.stderr
    assert run("credential-set", "create", "-n", "hub-creds", "-l", "docker.io", "-u", "env://HUB_USER", "-p",
               "keyring://regcache/hub-token").returncode == 0
    assert run("cache", "create", "-n", "ubuntu", "-s", "docker.io/ubuntu", "-t", "ubuntu", "-c",
               "hub-creds").returncode == 0
    listed = run("cache", "list", "-o", "json")
    assert listed.returncode == 0
    assert [(r["name"], r["sourceRepository"]) for r in json.loads(listed.stdout)] == [
        ("ubuntu", "docker.io/library/ubuntu")]
    refused = run("cache", "create", "-n", "ubuntu2", "-s", "docker.io/library/ubuntu", "-t", "ubuntu", "-c",
                  "hub-creds")
    assert refused.returncode == 1
    assert refused.stderr == "error: target 'ubuntu' is already the target of rule 'ubuntu' " \
                             "(ubuntu => docker.io/library/ubuntu)\n"
    assert "Traceback" not in refused.stderr
    usage = run("cache", "create", "-n", "x")
    assert usage.returncode == 2 and "Missing option" in usage.stderr


def test_listing_rules_loads_neither_textual_nor_uvicorn(home):
    code = (
        "import sys\n"
        "from tui.cli import main\n"
        "try:\n"
        "    main(['cache', 'list', '-o', 'json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('textual', 'uvicorn', 'starlette', 'httpx') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "REGCACHE_HOME": str(home)}, timeout=60)
    assert "HEAVY=\n" in result.stderr, result.stderr


def test_rule_settings(configured):
    created = json.loads(ok("cache", "create", "-n", "team-app", "-s", "ghcr.io/acme/*", "-t", "team/*",
                            "--freshness", "10m", "--retention", "30d", "-o", "json").stdout)
    assert (created["freshness"], created["retention"], created["serveStaleOnError"],
            created["serveStaleIfDeleted"]) == ("10m", "30d", True, False)
    updated = json.loads(ok("cache", "update", "-n", "team-app", "--no-serve-stale", "--serve-stale-if-deleted",
                            "--retention", "none", "--freshness", "0", "-o", "json").stdout)
    assert (updated["freshness"], updated["retention"], updated["serveStaleOnError"],
            updated["serveStaleIfDeleted"]) == ("0s", None, False, True)
    before = dump_database(configured)
    for bad, words in ((["--freshness", "soon"], "duration 'soon'"), (["--retention", "0"], "longer than 0")):
        result = cli("cache", "update", "-n", "team-app", *bad)
        assert result.exit_code == 1 and words in result.stderr
    assert dump_database(configured) == before


# -- hostile strings: refused clearly, and data printed as text ---------------------------------------

#: what a terminal would act on if printed raw: C0 and C1 controls, DEL and bidi overrides
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066")


def assert_printed_as_text(result) -> None:
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    assert not any(char in out for char in RAW), repr(out)


@pytest.mark.parametrize(("url", "words"), [
    ("http://a[b]c", "is not a valid URL"),
    ("http://[red]registry[/red]", "is not a valid URL"),
    ("http://ab c", "contains a space"),
    ("http://a\x1b[31mb", "U+001B (ESC)"),
    ("http://a\x07b", "U+0007 (BEL)"),
    ("https://evil\u202eexample.com", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ("https://" + "a" * 100_000, "the limit is 1,024"),
])
def test_a_hostile_upstream_url_is_one_clear_error_and_stores_nothing(home, url, words):
    ok("upstream", "list")  # the state directory exists
    before = dump_database(home)
    result = cli("upstream", "add", "--login-server", "x.example", "--url", url)
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and words in result.stderr
    assert result.stderr.count("\n") == 1  # one line
    assert_printed_as_text(result)
    assert dump_database(home) == before


def test_what_was_typed_is_escaped_in_clicks_own_errors(home):
    for args in (["cache", "list", "\x1b[31mextra"], ["cache", "list", "--\x1b]0;title\x07"],
                 ["cache", "list", "-o", "\u202ejson"], ["\x1b[2Jnot-a-command"]):
        result = cli(*args)
        assert result.exit_code == 2
        assert_printed_as_text(result)
        assert "\\x1b" in result.stderr or "\\u202e" in result.stderr


@pytest.fixture
def legacy(home, keyring_env):
    """Rows stored before configured strings were checked (or written to state.db by hand): control
    characters, a bidi override and markup in names, URLs, secret ids and a health message."""
    from regcache.proxy.core.models import AuthPolicy, CacheRule, CredentialHealth, CredentialSet

    control = ControlPlane.open(home)
    try:
        store = control.store
        store.upsert_upstream("evil.example", "https://evil\x1b]0;pwned\x07.example", AuthPolicy.BOTH, "custom")
        store.upsert_credential_set(CredentialSet(
            "evil-creds", "evil.example", "env://USER\x1b[2J", "keyring://[red]x[/red]/\u202etoken",
            CredentialHealth.unhealthy("SecretNotFound", "no secret \x1b[31mthere\x07")))
        store.insert_cache_rule(CacheRule("evil\x1b[31m-rule", "evil.example/a\u202epp", "[bold]app[/bold]",
                                          "evil-creds", sync_tags="^1\x9b"))
    finally:
        control.close()
    return home


@pytest.mark.parametrize("command", [[*listing, "-o", fmt] for listing in (["cache", "list"], ["upstream", "list"],
                                                                           ["credential-set", "list"])
                                     for fmt in ("table", "tsv", "json")] + [["rules", "export"]])
def test_stored_data_is_printed_as_text_never_as_escapes_or_markup(legacy, command):
    result = cli(*command)
    assert result.exit_code == 0, result.stderr
    assert_printed_as_text(result)
    if command[:2] == ["cache", "list"]:
        shown = json.loads(result.stdout)[0]["targetRepository"] if "json" in command else result.stdout
        assert "[bold]app[/bold]" in shown  # brackets are data: printed as they are


def test_an_error_quoting_stored_data_is_escaped(legacy):
    result = cli("cache", "show", "-n", "evil\x1b[31m-rule")
    assert result.exit_code == 1 and "U+001B (ESC)" in result.stderr
    assert_printed_as_text(result)
    shown = cli("credential-set", "show", "-n", "evil-creds", "-o", "tsv")
    assert shown.exit_code == 0 and "Unhealthy\tSecretNotFound\tno\t" in shown.stdout  # as stored; not readable
    assert_printed_as_text(shown)
    shown = cli("credential-set", "show", "-n", "evil-creds", "-o", "json")
    assert json.loads(shown.stdout)["authCredentials"][0]["secretAccess"]["username"]["errorCode"] == \
        "InvalidSecretId"  # its id is not valid now
    assert_printed_as_text(shown)


def test_secret_list_and_delete(home, keyring_env, tmp_path, monkeypatch):
    secrets_dir = tmp_path / "run-secrets"
    secrets_dir.mkdir(mode=0o700)
    (secrets_dir / "hub-token").write_text("t0ken-from-file\n")
    (secrets_dir / "hub-token").chmod(0o600)
    monkeypatch.setenv("REGCACHE_TEST_HUB_USER", "someone")
    ok("secret", "set", "keyring://regcache/ghcr-token", input="gh-t0ken\n")
    ok("credential-set", "create", "-n", "hub-creds", "-l", "docker.io", "-u", "env://REGCACHE_TEST_HUB_USER",
       "-p", f"file://{secrets_dir}/hub-token")
    ok("credential-set", "create", "-n", "ghcr-creds", "-l", "ghcr.io", "-u", "keyring://regcache/ghcr-user",
       "-p", "keyring://regcache/ghcr-token")
    listed = {s["secretId"]: s for s in json.loads(ok("secret", "list", "-o", "json").stdout)}
    assert set(listed) == {"env://REGCACHE_TEST_HUB_USER", f"file://{secrets_dir}/hub-token",
                           "keyring://regcache/ghcr-user", "keyring://regcache/ghcr-token"}
    assert listed[f"file://{secrets_dir}/hub-token"]["readable"] == "yes"
    assert listed[f"file://{secrets_dir}/hub-token"]["usedBy"] == ["credential set hub-creds (password)"]
    assert listed["keyring://regcache/ghcr-user"]["readable"] == "no"
    assert listed["keyring://regcache/ghcr-user"]["errorCode"] == "SecretNotFound"
    table = ok("secret", "list").stdout
    assert "READABLE HERE" in table and "t0ken" not in table and "someone" not in table

    # file:// and env:// are read-only sources: refused before a value is asked for
    for args in (["secret", "set", f"file://{secrets_dir}/hub-token"],
                 ["secret", "delete", "env://REGCACHE_TEST_HUB_USER"],
                 ["secret", "delete", f"file://{secrets_dir}/hub-token", "-y"]):
        refused = cli(*args, input="never-stored\n")
        assert refused.exit_code == 1 and refused.stderr.startswith("error: ")
        assert "read-only source" in refused.stderr or "not regcache's to delete" in refused.stderr
    assert (secrets_dir / "hub-token").read_text() == "t0ken-from-file\n"

    # a referenced keyring secret is kept unless --force
    in_use = cli("secret", "delete", "keyring://regcache/ghcr-token", "-y")
    assert in_use.exit_code == 1 and "used by credential set ghcr-creds (password)" in in_use.stderr
    assert "--force" in in_use.stderr
    from regcache.proxy.secrets import SecretResolver

    assert SecretResolver().get("keyring://regcache/ghcr-token") == "gh-t0ken"
    forced = ok("secret", "delete", "keyring://regcache/ghcr-token", "--force", "-y")
    assert "deleted keyring://regcache/ghcr-token" in forced.stderr
    gone = cli("secret", "delete", "keyring://regcache/ghcr-token", "--force", "-y")
    assert gone.exit_code == 1 and "there is no keyring://regcache/ghcr-token in the keyring" in gone.stderr
    ok("secret", "set", "keyring://regcache/spare", input="x\n")
    assert cli("secret", "delete", "keyring://regcache/spare").exit_code == 1  # no terminal to confirm: -y
    ok("secret", "delete", "keyring://regcache/spare", "-y")


def test_file_secret_refused_when_others_can_write_it(home, keyring_env, tmp_path):
    secrets_dir = tmp_path / "run-secrets"
    secrets_dir.mkdir(mode=0o700)
    (secrets_dir / "token").write_text("t0ken\n")
    (secrets_dir / "token").chmod(0o666)
    created = cli("credential-set", "create", "-n", "hub-creds", "-l", "docker.io", "-u", "env://USER", "-p",
                  f"file://{secrets_dir}/token")
    assert created.exit_code == 0
    assert "writable by its group or others (mode 0666)" in created.stderr and "t0ken" not in created.stderr
    listed = json.loads(ok("secret", "list", "-o", "json").stdout)
    assert [s["errorCode"] for s in listed if s["secretId"].startswith("file://")] == ["SecretFileUnsafe"]
    (secrets_dir / "token").chmod(0o644)
    shown = cli("credential-set", "show", "-n", "hub-creds", "-o", "json")
    password = json.loads(shown.stdout)["authCredentials"][0]["secretAccess"]["password"]
    assert not password["readable"] and "every user of this host can read it (mode 0644)" in password["reason"]
    (secrets_dir / "token").chmod(0o640)
    shown = cli("credential-set", "show", "-n", "hub-creds", "-o", "json")
    password = json.loads(shown.stdout)["authCredentials"][0]["secretAccess"]["password"]
    assert password["readable"] and "readable by its group (mode 0640)" in password["reason"]
