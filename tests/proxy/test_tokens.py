"""Client tokens: repository-scoped logins (ACR tokens and scope maps), from the hash to skopeo pulls.

Unit tests for the pure parts (hashing, scopes, expiry, Basic parsing, loopback), the registry app
over HTTP, the `regcache token` commands, and `regcache serve` pulled through with real skopeo.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.tokens import RepositoryScope, hash_password, parse_expiry, parse_repositories, verify_password
from regcache.proxy.http.client_auth import parse_basic
from regcache.proxy.server import ListenError, ProxyServer, is_loopback
from regcache.tui.cli import main
from tests.helpers.commands import regcache_executable
from tests.helpers.state import dump_database
from tests.registries.skopeo import SkopeoError, assert_pulled

# -- pure parts ------------------------------------------------------------------------------------


def test_password_hash_is_salted_and_verified_in_constant_time():
    first, second = hash_password("s3cret-value"), hash_password("s3cret-value")
    assert first != second  # a random salt per token
    assert first.startswith("scrypt$16384$8$1$") and "s3cret-value" not in first
    assert verify_password("s3cret-value", first) and verify_password("s3cret-value", second)
    assert not verify_password("s3cret-valuE", first)
    assert not verify_password("", first)
    assert not verify_password("s3cret-value", None)  # unknown user: a dummy hash is computed, then refused
    assert not verify_password("s3cret-value", "md5$abc")
    assert not verify_password("s3cret-value", "scrypt$x$8$1$AAAA$AAAA")


@pytest.mark.parametrize(("patterns", "allowed", "refused"), [
    (["ubuntu"], ["ubuntu"], ["ubuntu2", "library/ubuntu", "ubuntu/x"]),
    (["team/*"], ["team/app", "team/a/b"], ["team", "teamx/app", "other/team/app"]),
    (["*"], ["ubuntu", "team/app", "a/b/c/d"], []),
    (["team/*", "ubuntu", "a/b/*"], ["team/x", "ubuntu", "a/b/c", "a/b/c/d"], ["a/b", "a/c", "team"]),
])
def test_repository_scope(patterns, allowed, refused):
    scope = RepositoryScope(parse_repositories(patterns))
    assert all(scope.allows(name) for name in allowed)
    assert not any(scope.allows(name) for name in refused)
    assert scope.allows_all == ("*" in patterns)


def test_repository_patterns_use_the_target_grammar():
    assert parse_repositories([" team/* ", "ubuntu", "team/*", "*"]) == ("team/*", "ubuntu", "*")
    for bad, words in (("a/*/b", "'*' is allowed only as the whole last segment"), ("Ubuntu", "ubuntu"),
                       ("ubuntu:22.04", "must not carry a tag")):
        with pytest.raises(ValidationError) as exc:
            parse_repositories([bad])
        assert exc.value.message.startswith(f"repository pattern {bad!r}") and words in exc.value.message.lower()
    with pytest.raises(ValidationError, match="at least one"):
        parse_repositories([])


def test_expiry():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_expiry("30d", now) == now + timedelta(days=30)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2026-12-31", now) == datetime(2026, 12, 31, tzinfo=timezone.utc)
    assert parse_expiry("2026-06-01T08:30", now) == datetime(2026, 6, 1, 8, 30, tzinfo=timezone.utc)  # UTC
    assert parse_expiry("2026-06-01T08:30Z", now) == datetime(2026, 6, 1, 8, 30, tzinfo=timezone.utc)
    assert parse_expiry("2026-06-01T10:30+02:00", now) == datetime(2026, 6, 1, 8, 30, tzinfo=timezone.utc)
    for bad, words in (("2025-12-31", "not in the future"), ("0s", "not in the future"),
                       ("soon", "ISO date or datetime"), ("99999999999999w", "ISO date or datetime")):
        with pytest.raises(ValidationError, match=words):
            parse_expiry(bad, now)


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_parse_basic():
    assert parse_basic(_basic("ci-puller", "p:a:ss")) == ("ci-puller", "p:a:ss")
    assert parse_basic("basic " + base64.b64encode(b"u:").decode()) == ("u", "")
    for bad in ("Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                "Basic " + base64.b64encode(b"\xff:x").decode(), "Basic " + "A" * 5000):
        assert parse_basic(bad) is None


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True), ("LOCALHOST", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("192.168.1.10", False),
    ("myhost.example", False), ("128.0.0.1", False),
])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


# -- the registry app over HTTP -----------------------------------------------------------------------


def _auth(name: str, password: str) -> dict[str, str]:
    return {"Authorization": _basic(name, password)}


def _error(response: httpx.Response) -> dict:
    return response.json()["errors"][0]


def test_registry_requires_a_token_once_one_exists(regcache, monkeypatch):
    with regcache.http() as http:
        assert http.get("/v2/").status_code == 200  # no token: anonymous, as before
        regcache.control.add_upstream("nowhere.test:1", "http://127.0.0.1:1", "anonymous")
        regcache.control.create_rule("team-rule", "nowhere.test:1/acme/*", "team/*")
        regcache.control.create_rule("alpine-rule", "nowhere.test:1/library/alpine", "alpine")
        _, password = regcache.control.create_token("team-only", ["team/*", "alpine"])
        store = regcache.control.store
        for name in ("alpine", "other/app", "team/app", "team/b/c", "zeta"):
            store.record_repository(name, "team-rule", "nowhere.test:1")

        for method in ("GET", "HEAD"):
            refused = http.request(method, "/v2/")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Basic realm="regcache"'
            assert refused.headers["docker-distribution-api-version"] == "registry/2.0"
        assert _error(http.get("/v2/"))["code"] == "UNAUTHORIZED"
        assert _error(http.get("/v2/team/app/manifests/1"))["code"] == "UNAUTHORIZED"
        assert http.post("/v2/team/app/blobs/uploads/").status_code == 401  # authentication comes first
        wrong = http.get("/v2/", headers=_auth("team-only", password + "x"))
        assert wrong.status_code == 401 and _error(wrong)["message"] == "invalid token name or password"
        assert http.get("/v2/", headers=_auth("nobody-here", password)).status_code == 401
        assert http.get("/v2/", headers={"Authorization": "Bearer abc"}).status_code == 401

        calls = []
        from regcache.proxy.http import client_auth

        real_verify = client_auth.verify_password
        monkeypatch.setattr(client_auth, "verify_password",
                            lambda *args: calls.append(1) or real_verify(*args))
        creds = _auth("team-only", password)
        assert http.get("/v2/", headers=creds).status_code == 200
        denied = http.get("/v2/other/app/manifests/1", headers=creds)
        assert denied.status_code == 403
        assert _error(denied) == {"code": "DENIED", "detail": {"name": "other/app"},
                                  "message": "token 'team-only' may not pull repository 'other/app'; it may pull "
                                             "team/*, alpine"}
        assert http.head("/v2/team/manifests/1", headers=creds).status_code == 403  # team/* is under team/ only
        # allowed: the request reaches the cache (the upstream is unreachable: 503, not a refusal)
        assert http.get("/v2/team/app/manifests/1", headers=creds).status_code == 503
        # mirror mode: the name is the upstream's; the token is checked against the target it maps to
        assert http.get("/v2/library/alpine/manifests/3?ns=nowhere.test:1", headers=creds).status_code == 503
        assert http.get("/v2/library/alpine/manifests/3", headers=creds).status_code == 403
        catalog = http.get("/v2/_catalog", headers=creds)
        assert catalog.json() == {"repositories": ["alpine", "team/app", "team/b/c"]}
        page = http.get("/v2/_catalog?n=1&last=alpine", headers=creds)
        assert page.json() == {"repositories": ["team/app"]} and "last=team/app" in page.headers["link"]
        assert len(calls) == 1, "verified once, then served from the in-memory cache"

        _, everything = regcache.control.create_token("sees-all", ["*"])
        assert http.get("/v2/_catalog", headers=_auth("sees-all", everything)).json()["repositories"] == [
            "alpine", "other/app", "team/app", "team/b/c", "zeta"]
        used = {t.name: t.last_used for t in regcache.control.list_tokens()}
        assert used["team-only"] is not None and used["sees-all"] is not None

        regcache.control.delete_token("team-only")  # effective at once, despite the cached verification
        gone = http.get("/v2/", headers=creds)
        assert gone.status_code == 401 and _error(gone)["message"] == "invalid token name or password"
        regcache.control.delete_token("sees-all")
        assert http.get("/v2/").status_code == 200  # loopback and no token: anonymous again


def test_an_expired_token_is_refused_even_while_its_verification_is_cached(regcache):
    _, password = regcache.control.create_token("short-lived", ["*"], "2s")
    creds = _auth("short-lived", password)
    with regcache.http() as http:
        assert http.get("/v2/", headers=creds).status_code == 200
        time.sleep(2.2)
        expired = http.get("/v2/", headers=creds)
    assert expired.status_code == 401
    assert _error(expired)["message"].startswith("token 'short-lived' expired at ")


def test_exposed_server_is_refused_without_a_token_and_stays_closed_when_the_last_goes(home, keyring_env):
    import anyio

    from regcache.proxy.server import EmbeddedProxy

    with pytest.raises(ListenError, match="create a token with `regcache token create"):
        anyio.run(ProxyServer(home, "0.0.0.0:0", allow_anonymous=False).serve)
    control = ControlPlane.open(home)
    try:
        _, password = control.create_token("exposed", ["*"])
        proxy = EmbeddedProxy(ProxyServer(home, "0.0.0.0:0", allow_anonymous=False))
        port = proxy.start().port
        try:
            url = f"http://127.0.0.1:{port}/v2/"
            assert httpx.get(url).status_code == 401
            assert httpx.get(url, headers=_auth("exposed", password)).status_code == 200
            control.delete_token("exposed")
            assert httpx.get(url).status_code == 401, "no token left, but an exposed server must not turn anonymous"
        finally:
            proxy.stop()
    finally:
        control.close()


# -- regcache token (CLI) ------------------------------------------------------------------------------


def cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def ok(*args: str, input: str | None = None):
    result = cli(*args, input=input)
    assert result.exit_code == 0, result.stderr
    return result


def test_token_create_prints_the_password_once_and_stores_only_a_hash(home):
    created = ok("token", "create", "-n", "ci-puller", "--repository", "team/*", "--repository", "ubuntu",
                 "--expiry", "30d")
    header, _, row = created.stdout.splitlines()
    assert header.split() == ["NAME", "REPOSITORIES", "EXPIRY", "PASSWORD"]
    name, repositories, expiry, password = row.split()
    assert (name, repositories) == ("ci-puller", "team/*,ubuntu")
    assert len(password) >= 40 and created.stdout.count(password) == 1
    assert "will not be shown again" in created.stderr and password not in created.stderr
    assert datetime.fromisoformat(expiry) - datetime.now(timezone.utc) > timedelta(days=29)

    as_json = json.loads(ok("token", "create", "-n", "json-one", "--repository", "*", "-o", "json").stdout)
    json_password = as_json["credentials"]["passwords"][0]["value"]
    assert as_json["credentials"]["username"] == "json-one" and as_json["repositories"] == ["*"]
    tsv = ok("token", "create", "-n", "tsv-one", "--repository", "a/*", "-o", "tsv").stdout
    tsv_password = tsv.split("\t")[3].strip()

    control = ControlPlane.open(home)
    try:
        for token, secret in (("ci-puller", password), ("json-one", json_password), ("tsv-one", tsv_password)):
            assert verify_password(secret, control.get_token(token).password_hash)
    finally:
        control.close()

    outputs = [ok("token", "list", "-o", fmt) for fmt in ("table", "json", "tsv")]
    listed = json.loads(outputs[1].stdout)
    assert [(t["name"], t["repositories"], t["status"]) for t in listed] == [
        ("ci-puller", ["team/*", "ubuntu"], "enabled"), ("json-one", ["*"], "enabled"), ("tsv-one", ["a/*"], "enabled")]
    assert set(listed[0]) == {"name", "id", "type", "repositories", "status", "expiry", "creationDate", "lastUsed",
                              "provisioningState"}
    assert outputs[0].stdout.splitlines()[0].split() == ["NAME", "REPOSITORIES", "STATUS", "EXPIRY", "CREATED",
                                                         "LAST", "USED"]
    for secret in (password, json_password, tsv_password):
        for result in outputs:
            assert secret not in result.stdout and secret not in result.stderr
        for path in home.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


TOKEN_REFUSALS = [
    (["token", "create", "-n", "abc", "--repository", "x"], "must be 5 to 50 characters"),
    (["token", "create", "-n", "bad_name!", "--repository", "x"], "only letters, digits and hyphens"),
    (["token", "create", "-n", "existing", "--repository", "x"], "a token named 'existing' already exists"),
    (["token", "create", "-n", "new-token", "--repository", "a/*/b"], "repository pattern 'a/*/b'"),
    (["token", "create", "-n", "new-token", "--repository", "x", "--expiry", "2020-01-01"], "not in the future"),
    (["token", "create", "-n", "new-token", "--repository", "x", "--expiry", "soon"], "duration from now"),
    (["token", "delete", "-n", "existing"], "pass -y/--yes"),
    (["token", "delete", "-n", "no-such-token", "-y"], "token 'no-such-token' does not exist"),
]


@pytest.mark.parametrize(("command", "expected"), TOKEN_REFUSALS, ids=[c[1] for c in TOKEN_REFUSALS])
def test_refused_token_commands_change_nothing(home, command, expected):
    ok("token", "create", "-n", "existing", "--repository", "*")
    before = dump_database(home)
    result = cli(*command)
    assert result.exit_code == 1 and result.stdout == ""
    line, = result.stderr.splitlines()
    assert line.startswith("error: ") and expected in line
    assert dump_database(home) == before


def test_token_delete(home, monkeypatch):
    ok("token", "create", "-n", "first-one", "--repository", "*")
    ok("token", "create", "-n", "second-one", "--repository", "*")
    monkeypatch.setattr("regcache.tui.cli.common.interactive", lambda: True)
    declined = CliRunner().invoke(main, ["token", "delete", "-n", "first-one"], input="n\n")
    assert declined.exit_code == 1 and "cancelled" in declined.stderr
    accepted = CliRunner().invoke(main, ["token", "delete", "-n", "first-one"], input="y\n")
    assert accepted.exit_code == 0 and "deleted token first-one" in accepted.stderr
    last = ok("token", "delete", "-n", "second-one", "-y")
    assert "no client tokens remain" in last.stderr
    assert json.loads(ok("token", "list", "-o", "json").stdout) == []


# -- a password the operator gives (the same token on every node behind a balancer) -----------------------

GIVEN_PASSWORD = "Shared-Ci-Secret-4d1e9b"


def _files_holding(home: Path, secret: str) -> list[Path]:
    """The files under ``home`` (state.db, its WAL, ...) whose bytes contain ``secret``."""
    return [path for path in home.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


def test_create_token_with_a_given_password(regcache):
    token, password = regcache.control.create_token("given-one", ["*"], password=GIVEN_PASSWORD)
    assert password == GIVEN_PASSWORD and verify_password(GIVEN_PASSWORD, token.password_hash)
    with regcache.http() as http:
        assert http.get("/v2/", headers=_auth("given-one", GIVEN_PASSWORD)).status_code == 200
        assert http.get("/v2/", headers=_auth("given-one", GIVEN_PASSWORD[:-1])).status_code == 401
    for bad in ("too-short-15chr", " " + GIVEN_PASSWORD, GIVEN_PASSWORD + "\n", "two-line-secret-1\nnotes",
                "\x00-nul-in-a-long-secret", "x" * 1025):
        with pytest.raises(ValidationError) as refused:
            regcache.control.create_token("refused-one", ["*"], password=bad)
        assert refused.value.field == "password" and bad.strip() not in refused.value.message
    assert [t.name for t in regcache.control.list_tokens()] == ["given-one"]


def test_token_create_password_stdin(home):
    table = ok("token", "create", "-n", "ci-shared", "--repository", "team/*", "--expiry", "30d", "--password-stdin",
               input=GIVEN_PASSWORD + "\n")
    header, _, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "REPOSITORIES", "EXPIRY"] and row.split()[:2] == ["ci-shared", "team/*"]
    assert table.stderr.startswith("token ci-shared created with the password from stdin. Clients log in as "
                                   "ci-shared")
    as_json = json.loads(ok("token", "create", "-n", "json-shared", "--repository", "*", "--password-stdin",
                            "-o", "json", input=GIVEN_PASSWORD + "\r\n").stdout)
    assert as_json["credentials"]["username"] == "json-shared"
    entry, = as_json["credentials"]["passwords"]
    assert entry == {"name": "password1", "creationTime": as_json["creationDate"], "expiry": None}
    tsv = ok("token", "create", "-n", "tsv-shared", "--repository", "*", "--password-stdin", "-o", "tsv",
             input=GIVEN_PASSWORD)  # no line break at all
    assert tsv.stdout.rstrip("\n").split("\t")[:2] == ["tsv-shared", "*"]

    control = ControlPlane.open(home)
    try:
        for name in ("ci-shared", "json-shared", "tsv-shared"):
            stored = control.get_token(name).password_hash
            assert verify_password(GIVEN_PASSWORD, stored) and not verify_password(GIVEN_PASSWORD + "\n", stored)
    finally:
        control.close()
    listed = [ok("token", "list", "-o", fmt) for fmt in ("table", "json", "tsv")]
    for result in (table, *listed):
        assert GIVEN_PASSWORD not in result.stdout and GIVEN_PASSWORD not in result.stderr
    assert GIVEN_PASSWORD not in json.dumps(as_json) and GIVEN_PASSWORD not in tsv.output
    assert (home / "state.db").is_file() and _files_holding(home, GIVEN_PASSWORD) == []


def test_token_create_password_stdin_as_a_subprocess(home, keyring_env):
    env = {**os.environ, **keyring_env, "REGCACHE_HOME": str(home)}
    run = subprocess.run([regcache_executable(), "token", "create", "-n", "piped-one", "--repository", "*",
                          "--password-stdin"], input=GIVEN_PASSWORD + "\n", capture_output=True, text=True,
                         env=env, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "token piped-one created with the password from stdin" in run.stderr
    assert GIVEN_PASSWORD not in run.stdout + run.stderr
    assert _files_holding(home, GIVEN_PASSWORD) == []
    control = ControlPlane.open(home)
    try:
        assert verify_password(GIVEN_PASSWORD, control.get_token("piped-one").password_hash)
    finally:
        control.close()


def test_token_create_password_prompt_does_not_echo(home, monkeypatch):
    monkeypatch.setattr("regcache.tui.cli.common.interactive", lambda: True)
    other = "Typo-Ci-Secret-0000000"
    result = CliRunner().invoke(main, ["token", "create", "-n", "typed-one", "--repository", "*",
                                       "--password-stdin"],
                                input=f"{GIVEN_PASSWORD}\n{other}\n{GIVEN_PASSWORD}\n{GIVEN_PASSWORD}\n")
    assert result.exit_code == 0, result.stderr
    assert "Password for token typed-one" in result.stderr and "do not match" in result.stderr
    assert "created with the password from the prompt" in result.stderr
    assert GIVEN_PASSWORD not in result.output and other not in result.output
    control = ControlPlane.open(home)
    try:
        assert verify_password(GIVEN_PASSWORD, control.get_token("typed-one").password_hash)
    finally:
        control.close()


PASSWORD_REFUSALS = [
    ("Sh0rt-Pw-9x\n", "the password has 11 characters; a token's password needs at least 16"),
    ("", "the password has 0 characters"),
    ("\n", "the password has 0 characters"),
    ("  " + GIVEN_PASSWORD + "\n", "starts or ends with whitespace"),
    (GIVEN_PASSWORD + " \n", "starts or ends with whitespace"),
    (GIVEN_PASSWORD + "\n\n", "starts or ends with whitespace"),
    ("First-Line-Secret-77\nurl: https://example\n", "contains a line break, tab or other unprintable"),
    ("Tabbed\tSecret-Value-1234\n", "contains a line break, tab or other unprintable"),
    ("Long-" + "z" * 1100 + "\n", "longer than 1024 bytes"),
]


@pytest.mark.parametrize(("stdin", "expected"), PASSWORD_REFUSALS, ids=[repr(s[:24]) for s, _ in PASSWORD_REFUSALS])
def test_refused_password_stdin_changes_nothing(home, stdin, expected):
    ok("token", "create", "-n", "existing", "--repository", "*")
    before = dump_database(home)
    result = cli("token", "create", "-n", "new-token", "--repository", "*", "--password-stdin", input=stdin)
    assert result.exit_code == 1 and result.stdout == ""
    line, = result.stderr.splitlines()
    assert line.startswith("error: ") and expected in line
    for part in filter(None, (p.strip() for p in stdin.splitlines())):
        assert part not in line
        assert _files_holding(home, part) == []
    assert dump_database(home) == before


# -- regcache serve, pulled through with skopeo ------------------------------------------------------------


def _configure(home: Path, registry) -> None:
    control = ControlPlane.open(home)
    try:
        control.add_upstream(registry.host, registry.url, "anonymous")
        control.create_rule("team-images", f"{registry.host}/team/*", "team/*")
        control.create_rule("other-images", f"{registry.host}/other/*", "other/*")
    finally:
        control.close()


def test_skopeo_pulls_with_a_token_through_serve(home, serve, anonymous_registry, push_image, skopeo, tmp_path):
    _configure(home, anonymous_registry)
    app = push_image(anonymous_registry, "team/app", "1", layers=[200_000, 3_000])
    push_image(anonymous_registry, "other/secret", "1", layers=[1_000])
    process = serve()

    # no token yet: anonymous pulls work, as before
    assert_pulled(skopeo.copy_to_oci(f"{process.host}/team/app:1", tmp_path / "anonymous", "1"), "1", app)

    control = ControlPlane.open(home)
    try:
        _, password = control.create_token("team-puller", ["team/*"])
    finally:
        control.close()
    creds = ("team-puller", password)
    assert_pulled(skopeo.copy_to_oci(f"{process.host}/team/app:1", tmp_path / "with-token", "1", credentials=creds),
                  "1", app)
    with pytest.raises(SkopeoError) as outside:
        skopeo.copy_to_oci(f"{process.host}/other/secret:1", tmp_path / "outside", "1", credentials=creds)
    assert ("denied: token 'team-puller' may not pull repository 'other/secret'; it may pull team/*"
            in outside.value.stderr)
    with pytest.raises(SkopeoError) as wrong:
        skopeo.copy_to_oci(f"{process.host}/team/app:1", tmp_path / "wrong", "1",
                           credentials=("team-puller", password[:-1]))
    assert "unauthorized: invalid token name or password" in wrong.value.stderr
    with pytest.raises(SkopeoError) as anonymous:
        skopeo.copy_to_oci(f"{process.host}/team/app:1", tmp_path / "no-creds", "1")
    assert "unauthorized: authentication required" in anonymous.value.stderr

    code, output = process.terminate()
    assert code == 0, output
    assert password not in output


def test_skopeo_with_an_expired_token_fails(home, serve, anonymous_registry, push_image, skopeo, tmp_path):
    _configure(home, anonymous_registry)
    push_image(anonymous_registry, "team/app", "1", layers=[1_000])
    process = serve()
    control = ControlPlane.open(home)
    try:
        _, password = control.create_token("soon-expired", ["*"], "2s")
    finally:
        control.close()
    assert httpx.get(f"{process.url}/v2/", headers=_auth("soon-expired", password)).status_code == 200
    time.sleep(2.2)
    with pytest.raises(SkopeoError) as expired:
        skopeo.copy_to_oci(f"{process.host}/team/app:1", tmp_path / "expired", "1",
                           credentials=("soon-expired", password))
    assert "unauthorized: token 'soon-expired' expired at" in expired.value.stderr


def test_serve_beyond_loopback_needs_a_token_or_allow_anonymous(home, keyring_env, serve):
    result = subprocess.run([regcache_executable(), "--home", str(home), "serve", "--listen", "0.0.0.0:0"],
                            capture_output=True, text=True, timeout=30, env={**os.environ, **keyring_env})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: refusing to listen on 0.0.0.0:0 without client authentication: anyone who can reach it could pull "
        "through this cache; create a token with `regcache token create -n NAME --repository PATTERN` or pass "
        "--allow-anonymous"]

    anonymous = serve("--allow-anonymous", listen="0.0.0.0:0")
    port = anonymous.host.rpartition(":")[2]
    assert httpx.get(f"http://127.0.0.1:{port}/v2/").status_code == 200
    assert anonymous.terminate()[0] == 0

    ok("token", "create", "-n", "remote-puller", "--repository", "*")
    with_token = serve(listen="0.0.0.0:0")
    port = with_token.host.rpartition(":")[2]
    assert httpx.get(f"http://127.0.0.1:{port}/v2/").status_code == 401
    assert with_token.terminate()[0] == 0


def test_tui_refuses_a_non_loopback_address_before_opening(home):
    result = cli("tui", "--listen", "0.0.0.0:5000")
    assert result.exit_code == 1
    line, = result.stderr.splitlines()
    assert line.startswith("error: refusing to listen on 0.0.0.0:5000 without client authentication")
