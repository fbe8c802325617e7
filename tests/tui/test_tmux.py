"""The real `regcache` command under tmux: create a rule by typing, find it with `regcache cache list`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.helpers.commands import regcache_executable
from tests.helpers.tmux import keys, screen, tmux, wait_for_text


@pytest.fixture
def session(home, keyring_env):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: apt-get install -y tmux", pytrace=False)
    name = f"regcache-test-{os.getpid()}"
    env = " ".join(f"{k}={v}" for k, v in keyring_env.items())
    command = f"env {env} TERM=xterm-256color {regcache_executable()} --home {home} tui --listen 127.0.0.1:0"
    tmux("new-session", "-d", "-s", name, "-x", "80", "-y", "24", command)
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=30)


def test_create_a_rule_by_typing(session, home, keyring_env):
    shown = wait_for_text(session, "running")
    assert "proxy http://127.0.0.1:" in shown
    keys(session, "2")
    wait_for_text(session, "No cache rules yet")
    keys(session, "n")
    wait_for_text(session, "New cache rule")
    keys(session, "-l", "typed-rule")
    keys(session, "Tab", "Enter", "Down", "Down", "Down", "Enter")  # Source: ghcr.io
    wait_for_text(session, "ghcr.io")
    keys(session, "Tab", "-l", "acme/typed", "Tab", "Tab", "-l", "typed")
    keys(session, "C-s")
    wait_for_text(session, "Created cache rule typed-rule")
    result = subprocess.run([regcache_executable(), "--home", str(home), "cache", "list", "-o", "json"],
                            capture_output=True, text=True, timeout=30, env={**os.environ, **keyring_env})
    rules = json.loads(result.stdout)
    assert [(r["name"], r["sourceRepository"], r["targetRepository"]) for r in rules] == [
        ("typed-rule", "ghcr.io/acme/typed", "typed")]
    keys(session, "q")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("regcache did not quit on q:\n" + screen(session))
