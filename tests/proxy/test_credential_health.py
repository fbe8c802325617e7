"""Credential health tells the truth: it is the last real upstream login, whoever looks.

Against a real htpasswd docker registry: a `credential-set show` from another environment (without the
env:// variables, or right after a refused login) changes nothing the engine reports; a wrong then
corrected password goes Unhealthy then Healthy through pulls alone; `show --check` logs in for real.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers.commands import regcache_executable
from tests.registries.skopeo import SkopeoError, assert_pulled

pytestmark = pytest.mark.slow


def _cli(home, *args: str, env: dict[str, str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([regcache_executable(), "--home", str(home), *args], capture_output=True, text=True,
                          env=env, input=input, timeout=120, stdin=None if input is not None else subprocess.DEVNULL)


def _health(regcache, name: str) -> tuple[str, str | None, object]:
    health = regcache.control.get_credential_set(name).health
    return health.status.value, health.error_code, health.checked_at


def test_show_from_another_environment_changes_nothing(regcache, basic_auth_registry, push_image, skopeo, tmp_path,
                                                       monkeypatch, keyring_env):
    user, password = basic_auth_registry.credentials
    monkeypatch.setenv("HEALTH_TEST_USER", user)
    monkeypatch.setenv("HEALTH_TEST_PASSWORD", password)
    server = regcache.add_upstream(basic_auth_registry, auth="credentials")
    regcache.control.create_credential_set("env-creds", server, "env://HEALTH_TEST_USER", "env://HEALTH_TEST_PASSWORD")
    regcache.control.create_rule("env-app", f"{server}/acme/env", "env-app", "env-creds")
    push_image(basic_auth_registry, "acme/env", "1", layers=[10_000])
    assert _health(regcache, "env-creds")[0] == "Unknown"  # created: no login yet

    skopeo.copy_to_oci(f"{regcache.host}/env-app:1", tmp_path / "pulled", "1")
    healthy = _health(regcache, "env-creds")
    assert healthy[:2] == ("Healthy", None) and healthy[2] is not None

    # a shell without the variables: it says it cannot read them, and writes nothing
    bare = {k: v for k, v in os.environ.items() if not k.startswith("HEALTH_TEST_")} | keyring_env
    for args in (["credential-set", "show", "-n", "env-creds", "-o", "json"], ["credential-set", "list", "-o", "json"]):
        shown = _cli(regcache.home, *args, env=bare)
        assert shown.returncode == 0, shown.stderr
        record = json.loads(shown.stdout)
        record = record[0] if isinstance(record, list) else record
        assert record["authCredentials"][0]["credentialHealth"]["status"] == "Healthy"  # what the proxy found
        assert record["secretsReadable"] == "no"
        assert record["authCredentials"][0]["secretAccess"]["password"]["errorCode"] == "SecretNotFound"
    assert _health(regcache, "env-creds") == healthy
    # the proxy (this process, with the variables) still pulls with them
    skopeo.copy_to_oci(f"{regcache.host}/env-app:1", tmp_path / "again", "1")
    assert _health(regcache, "env-creds")[:2] == ("Healthy", None)


def test_a_refused_login_is_not_overwritten_by_a_read(regcache, basic_auth_registry, push_image, skopeo, tmp_path,
                                                      keyring_env):
    server = regcache.add_upstream(basic_auth_registry, auth="credentials")
    user, _ = basic_auth_registry.credentials
    regcache.control.set_secret("keyring://regcache-tests/health-u", user)
    regcache.control.set_secret("keyring://regcache-tests/health-p", "not-the-password")
    regcache.control.create_credential_set("wrong-creds", server, "keyring://regcache-tests/health-u",
                                           "keyring://regcache-tests/health-p")
    regcache.control.create_rule("wrong-app", f"{server}/acme/wrong", "wrong-app", "wrong-creds")
    push_image(basic_auth_registry, "acme/wrong", "1", layers=[10_000])
    with pytest.raises(SkopeoError):
        skopeo.copy_to_oci(f"{regcache.host}/wrong-app:1", tmp_path / "wrong", "1")
    refused = _health(regcache, "wrong-creds")
    assert refused[:2] == ("Unhealthy", "UpstreamAuthFailed")
    env = {**os.environ, **keyring_env}
    shown = _cli(regcache.home, "credential-set", "show", "-n", "wrong-creds", "-o", "json", env=env)
    record = json.loads(shown.stdout)
    assert record["secretsReadable"] == "yes"  # the secrets can be read; the upstream still refused them
    assert record["authCredentials"][0]["credentialHealth"]["errorCode"] == "UpstreamAuthFailed"
    assert "refused" in record["authCredentials"][0]["credentialHealth"]["errorMessage"]
    assert _health(regcache, "wrong-creds") == refused


def test_a_wrong_then_corrected_password_heals_through_pulls_alone(regcache, basic_auth_registry, push_image, skopeo,
                                                                   tmp_path, keyring_env):
    server = regcache.add_upstream(basic_auth_registry, auth="credentials")
    user, password = basic_auth_registry.credentials
    env = {**os.environ, **keyring_env}
    for name, value in (("fix-u", user), ("fix-p", "typo-password")):  # as an operator would: the real CLI
        assert _cli(regcache.home, "secret", "set", f"keyring://regcache-tests/{name}", env=env,
                    input=value + "\n").returncode == 0
    regcache.control.create_credential_set("fix-creds", server, "keyring://regcache-tests/fix-u",
                                           "keyring://regcache-tests/fix-p")
    regcache.control.create_rule("fix-app", f"{server}/acme/fix", "fix-app", "fix-creds")
    image = push_image(basic_auth_registry, "acme/fix", "1", layers=[10_000])

    with pytest.raises(SkopeoError):
        skopeo.copy_to_oci(f"{regcache.host}/fix-app:1", tmp_path / "typo", "1")
    assert _health(regcache, "fix-creds")[:2] == ("Unhealthy", "UpstreamAuthFailed")

    fixed = _cli(regcache.home, "secret", "set", "keyring://regcache-tests/fix-p", env=env, input=password + "\n")
    assert fixed.returncode == 0, fixed.stderr
    # no re-check pressed: the next pull reads the corrected secret and the upstream accepts it
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/fix-app:1", tmp_path / "fixed", "1"), "1", image)
    status, code, when = _health(regcache, "fix-creds")
    assert (status, code) == ("Healthy", None) and when is not None


def test_show_check_logs_in_to_the_upstream_for_real(regcache, basic_auth_registry, keyring_env):
    server = regcache.add_upstream(basic_auth_registry, auth="credentials")
    user, password = basic_auth_registry.credentials
    env = {**os.environ, **keyring_env}
    regcache.control.set_secret("keyring://regcache-tests/check-u", user)
    regcache.control.set_secret("keyring://regcache-tests/check-p", password)
    regcache.control.set_secret("keyring://regcache-tests/check-bad", "wrong")
    regcache.control.create_credential_set("check-good", server, "keyring://regcache-tests/check-u",
                                           "keyring://regcache-tests/check-p")
    regcache.control.create_credential_set("check-bad", server, "keyring://regcache-tests/check-u",
                                           "keyring://regcache-tests/check-bad")
    good = _cli(regcache.home, "credential-set", "show", "-n", "check-good", "--check", "-o", "json", env=env)
    assert good.returncode == 0, good.stderr
    assert f"checked: {server} accepted the login" in good.stderr
    assert json.loads(good.stdout)["authCredentials"][0]["credentialHealth"]["status"] == "Healthy"
    assert _health(regcache, "check-good")[:2] == ("Healthy", None)

    bad = _cli(regcache.home, "credential-set", "show", "-n", "check-bad", "--check", "-o", "json", env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith(f"error: upstream {server}: refused the credentials")
    assert json.loads(bad.stdout)["authCredentials"][0]["credentialHealth"]["errorCode"] == "UpstreamAuthFailed"
    assert _health(regcache, "check-bad")[:2] == ("Unhealthy", "UpstreamAuthFailed")
    assert "wrong" not in bad.stdout + bad.stderr

    # the TUI's re-check (the Credentials blade's `r`) is the same login, through the backend
    from regcache.tui.backend import Backend

    backend = Backend.open(regcache.home)
    try:
        assert _cli(regcache.home, "secret", "set", "keyring://regcache-tests/check-bad", env=env,
                    input=password + "\n").returncode == 0
        check = backend.check_credential_set("check-bad")
        assert check.verified and check.credential_set.health.status.value == "Healthy"
    finally:
        backend.close()
    assert _health(regcache, "check-bad")[:2] == ("Healthy", None)

    # an unreachable upstream tells nothing about the login: the health stays
    basic_auth_registry.stop()
    down = _cli(regcache.home, "credential-set", "show", "-n", "check-good", "--check", env=env)
    assert down.returncode == 1 and "error: the login could not be checked" in down.stderr
    assert _health(regcache, "check-good")[:2] == ("Healthy", None)
