"""A keyring that needs a password (keyrings.alt's EncryptedKeyring, the jump-host keyring) never prompts on the
terminal: the TUI asks once in a modal and pulls then succeed; `serve` and commands without a terminal refuse
with a clear error; a command on a terminal asks once without echo."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import anyio
import httpx
import pytest
from textual.widgets import Static

from regcache.proxy.server import EmbeddedProxy, ProxyServer
from regcache.tui.app import RegcacheApp
from regcache.tui.backend import Backend
from regcache.tui.screens.unlock import UnlockScreen
from tests.helpers.commands import regcache_executable
from tests.helpers.keyrings import make_encrypted_keyring
from tests.helpers.pilot import screen_lines, type_into, wait_for
from tests.helpers.tmux import keys, tmux, wait_for_text
from tests.registries.skopeo import assert_pulled

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KEYRING_PASSWORD = "jump-host-keyring-pw"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def locked(home, tmp_path, encrypted_keyring_env, basic_auth_registry, push_image):
    """A state directory whose credential set reads its secrets from a locked encrypted keyring, a rule using
    it on a real htpasswd registry, and an image there. Yields (environment, image)."""
    user, password = basic_auth_registry.credentials
    make_encrypted_keyring(tmp_path / "xdg-data", KEYRING_PASSWORD,
                           {("regcache-tests", "u"): user, ("regcache-tests", "p"): password})
    backend = Backend.open(home)
    try:
        control = backend.control
        control.add_upstream(basic_auth_registry.host, basic_auth_registry.url, "credentials")
        control.create_credential_set("locked-creds", basic_auth_registry.host, "keyring://regcache-tests/u",
                                      "keyring://regcache-tests/p")
        control.create_rule("locked-app", f"{basic_auth_registry.host}/acme/locked", "locked", "locked-creds")
    finally:
        backend.close()
    image = push_image(basic_auth_registry, "acme/locked", "1", layers=[20_000])
    return encrypted_keyring_env, image


@pytest.fixture
def no_prompt(monkeypatch):
    """Records every getpass call of this process (none may happen)."""
    asked: list[str] = []

    def recorder(prompt: str = "", stream: object = None) -> str:
        asked.append(prompt)
        return ""

    monkeypatch.setattr("getpass.getpass", recorder)
    return asked


async def test_the_tui_asks_once_in_a_modal_then_pulls_succeed(locked, home, skopeo, tmp_path, capfd, no_prompt):
    _, image = locked
    backend = Backend.open(home)
    app = RegcacheApp(backend, EmbeddedProxy(ProxyServer(home, "127.0.0.1:0")))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, UnlockScreen)
                           and bool(app.screen.query("#unlock-password")))
            await pilot.pause()
            assert "crypted_pass.cfg" in "".join(screen_lines(app))
            await type_into(pilot, "#unlock-password", "not-the-password")
            await pilot.press("enter")
            error = app.screen.query_one("#unlock-error", Static)
            await wait_for(pilot, lambda: error.display)
            assert "wrong password" in str(error.render())
            assert isinstance(app.screen, UnlockScreen)
            await type_into(pilot, "#unlock-password", KEYRING_PASSWORD)
            await pilot.press("enter")
            await wait_for(pilot, lambda: not isinstance(app.screen, UnlockScreen))
            await wait_for(pilot, lambda: app.proxy_status.state == "running")
            address = app.proxy_status.address
            layout = await anyio.to_thread.run_sync(skopeo.copy_to_oci, f"{address}/locked:1", tmp_path / "out", "1")
            assert_pulled(layout, "1", image)
            assert KEYRING_PASSWORD not in app.export_screenshot()
    finally:
        backend.close()
    health = Backend.open(home)
    try:
        assert health.control.get_credential_set("locked-creds").health.status.value == "Healthy"
    finally:
        health.close()
    out, err = capfd.readouterr()
    assert no_prompt == []
    assert "password" not in (out + err).lower()  # nothing printed over the screen


async def test_skipping_the_modal_fails_pulls_clearly(locked, home, capfd, no_prompt):
    backend = Backend.open(home)
    app = RegcacheApp(backend, EmbeddedProxy(ProxyServer(home, "127.0.0.1:0")))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, UnlockScreen)
                           and bool(app.screen.query("#unlock-password")))
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, UnlockScreen))
            await wait_for(pilot, lambda: app.proxy_status.state == "running")
            url = f"http://{app.proxy_status.address}/v2/locked/manifests/1"
            response = await anyio.to_thread.run_sync(lambda: httpx.get(url, timeout=30))
    finally:
        backend.close()
    assert response.status_code == 503
    message = response.json()["errors"][0]["message"]
    assert "is locked" in message and "file:///PATH" in message and "env://VAR" in message
    out, err = capfd.readouterr()
    assert no_prompt == [] and "password" not in (out + err).lower()


def test_serve_refuses_instead_of_prompting(locked, home):
    env, _ = locked
    process = subprocess.Popen([regcache_executable(), "--home", str(home), "serve", "--listen", "127.0.0.1:0"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **env}, start_new_session=True)  # no terminal to prompt on
    lines: list[str] = []
    try:
        assert process.stdout is not None
        lines.append(process.stdout.readline())
        while lines[-1] and "serving http://" not in lines[-1]:
            lines.append(process.stdout.readline())
        line = lines[-1]
        assert "serving http://" in line, lines
        address = line.split("serving http://", 1)[1].split()[0]
        response = httpx.get(f"http://{address}/v2/locked/manifests/1", timeout=30)  # answered, never hung
        assert response.status_code == 503
        assert "is locked" in response.json()["errors"][0]["message"]
    finally:
        process.terminate()
        output = "".join(lines) + process.communicate(timeout=30)[0]
    assert process.returncode == 0
    assert "Please enter password" not in output and "Traceback" not in output
    assert "cannot be used by this process" in output and "is locked" in output  # the log says why


def test_commands_without_a_terminal_refuse_with_a_clear_error(locked, home):
    env = {**os.environ, **locked[0]}

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([regcache_executable(), "--home", str(home), *args], input=input, capture_output=True,
                              text=True, env=env, timeout=120, start_new_session=True,
                              stdin=None if input is not None else subprocess.DEVNULL)

    stored = run("secret", "set", "keyring://regcache-tests/new", input="value\n")
    assert stored.returncode == 1
    line, = stored.stderr.splitlines()
    assert line.startswith("error: the EncryptedKeyring at ") and "is locked" in line and "file:///PATH" in line
    created = run("credential-set", "create", "-n", "more-creds", "-l", "docker.io", "-u",
                  "keyring://regcache-tests/u", "-p", "keyring://regcache-tests/p")
    assert created.returncode == 0 and "Aborted" not in created.stderr + created.stdout
    assert created.stderr.startswith("warning: this process cannot read the username of credential set more-creds")
    checked = run("credential-set", "show", "-n", "locked-creds", "--check")
    assert checked.returncode == 1 and "is locked" in checked.stderr.splitlines()[-1]
    assert checked.stderr.splitlines()[-1].startswith("error: ")
    listed = run("secret", "list", "-o", "json")
    assert listed.returncode == 0
    assert {s["secretId"]: s["readable"] for s in json.loads(listed.stdout)} == {
        "keyring://regcache-tests/u": "no", "keyring://regcache-tests/p": "no"}
    for result in (stored, created, checked, listed):
        assert "Please enter password" not in result.stdout + result.stderr


def test_a_command_on_a_terminal_asks_once_without_echo(locked, home):
    env = locked[0]
    session = f"regcache-unlock-{uuid.uuid4().hex[:8]}"
    envs = " ".join(f"{k}={v}" for k, v in env.items())
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "30",
         f"env {envs} {regcache_executable()} --home {home} secret set keyring://regcache-tests/new; sleep 30")
    try:
        wait_for_text(session, "Secret value")
        keys(session, "n3w-value", "Enter")
        wait_for_text(session, "Repeat for confirmation")
        keys(session, "n3w-value", "Enter")
        wait_for_text(session, "Password for the EncryptedKeyring at")
        keys(session, KEYRING_PASSWORD, "Enter")
        shown = wait_for_text(session, "stored keyring://regcache-tests/new")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert "n3w-value" not in shown and KEYRING_PASSWORD not in shown
    assert shown.count("Password for the EncryptedKeyring") == 1
    from keyrings.alt.file import EncryptedKeyring

    keyring = EncryptedKeyring()
    keyring.keyring_key = KEYRING_PASSWORD
    assert keyring.get_password("regcache-tests", "new") == "n3w-value"
