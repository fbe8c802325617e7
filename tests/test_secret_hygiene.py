"""Secret hygiene end to end: after real Basic and Bearer logins (good and wrong), no secret value is in
state.db or its WAL, the logs, the events, error messages, the TUI's screen or the process list."""

from __future__ import annotations

import os
import subprocess

import pytest

from regcache.proxy.config.control import ControlPlane
from tests.helpers.commands import ServeProcess, regcache_executable
from tests.helpers.tmux import keys, screen, tmux, wait_for_text
from tests.registries.skopeo import SkopeoError


def test_no_secret_anywhere(home, keyring_env, basic_auth_registry, token_registry, push_image, skopeo, tmp_path):
    env = {**os.environ, **keyring_env, "REGCACHE_HOME": str(home)}
    token_registry.issuer.allow_anonymous = False
    basic_user, basic_password = basic_auth_registry.credentials
    secrets = {
        "basic-user": basic_user, "basic-pass": basic_password,
        "token-user": token_registry.username, "token-pass": token_registry.password,
        "wrong-pass": "Wr0ng-S3cret-Value-77",
    }
    for name, value in secrets.items():  # through stdin, never argv
        subprocess.run([regcache_executable(), "secret", "set", f"keyring://regcache-hygiene/{name}"],
                       input=value + "\n", text=True, env=env, check=True, capture_output=True)
    control = ControlPlane.open(home)
    control.add_upstream(basic_auth_registry.host, basic_auth_registry.url, "credentials")
    # its token service is on another loopback port: allowed for it, so it may receive the credential set
    control.add_upstream(token_registry.host, token_registry.url, "credentials", [token_registry.issuer.url])
    k = "keyring://regcache-hygiene/"
    control.create_credential_set("basic-good", basic_auth_registry.host, k + "basic-user", k + "basic-pass")
    control.create_credential_set("basic-bad", basic_auth_registry.host, k + "basic-user", k + "wrong-pass")
    control.create_credential_set("token-good", token_registry.host, k + "token-user", k + "token-pass")
    control.create_credential_set("token-bad", token_registry.host, k + "token-user", k + "wrong-pass")
    for name, registry, cred in (("basic-ok", basic_auth_registry, "basic-good"),
                                 ("basic-no", basic_auth_registry, "basic-bad"),
                                 ("token-ok", token_registry, "token-good"),
                                 ("token-no", token_registry, "token-bad")):
        control.create_rule(name, f"{registry.host}/acme/secretive", name, cred)
    control.close()
    push_image(basic_auth_registry, "acme/secretive", "1", layers=[5_000])
    push_image(token_registry, "acme/secretive", "1", layers=[5_000])

    serve = ServeProcess(home, "--listen", "127.0.0.1:0", "--log-level", "debug", env=keyring_env)
    session = f"regcache-hygiene-{os.getpid()}"
    envs = " ".join(f"{k}={v}" for k, v in keyring_env.items())
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40",
         f"env {envs} TERM=xterm-256color {regcache_executable()} --home {home} tui --listen 127.0.0.1:0")
    seen: list[str] = []
    try:
        for target in ("basic-ok", "token-ok"):
            skopeo.copy_to_oci(f"{serve.host}/{target}:1", tmp_path / target, "1")
        for target in ("basic-no", "token-no"):
            with pytest.raises(SkopeoError) as info:
                skopeo.copy_to_oci(f"{serve.host}/{target}:1", tmp_path / target, "1")
            seen.append(info.value.stderr)
        seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
        wait_for_text(session, "running")
        for key, title in (("3", "Credentials"), ("1", "Overview"), ("4", "Activity"), ("2", "Cache rules")):
            keys(session, key)
            seen.append(wait_for_text(session, title))
        seen.append(screen(session))
        for args in (["credential-set", "list", "-o", "json"], ["credential-set", "show", "-n", "basic-bad"],
                     ["rules", "export"], ["cache", "list", "-o", "json"]):
            result = subprocess.run([regcache_executable(), *args], capture_output=True, text=True, env=env)
            seen += [result.stdout, result.stderr]
    finally:
        code, output = serve.terminate()
        seen.append(output)
        keys(session, "q")
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert code == 0
    control = ControlPlane.open(home)
    try:
        health = control.get_credential_set("token-bad").health
        assert health.error_code == "UpstreamAuthFailed"
        events = control.store.events(limit=100_000)
        assert any(e["result"] == "error" for e in events)
        seen += [str(e) for e in events] + [str(health)]
    finally:
        control.close()
    files = [p for p in home.rglob("*") if p.is_file() and "blobs" not in p.parts]
    assert {p.name for p in files} >= {"state.db"}
    for value in secrets.values():
        for text in seen:
            assert value not in text
        for path in files:
            assert value.encode() not in path.read_bytes(), path
