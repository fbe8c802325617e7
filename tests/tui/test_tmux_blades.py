"""The real `regcache` TUI under tmux at 80x24 (issue 15): search in a 1,000-rule list, the Tokens blade, and
checkbox states told apart in the pane's plain text (tmux capture-pane without colours)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.models import CacheRule
from regcache.proxy.core.rules import MAX_RULES
from regcache.proxy.core.tokens import verify_password
from tests.helpers.commands import regcache_executable
from tests.helpers.tmux import keys, quit_cleanly, start_tui, wait_for_text

from .conftest import T0

pytestmark = pytest.mark.slow


@pytest.fixture
def start(home, keyring_env):
    """Start the TUI in an 80x24 pane once the state directory holds what the test put there."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: apt-get install -y tmux", pytrace=False)
    name = f"regcache-blades-{os.getpid()}"

    def run() -> str:
        start_tui(name, home, keyring_env)
        wait_for_text(name, "running")
        return name

    yield run
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=30)


def test_search_in_a_thousand_rules(start, home):
    control = ControlPlane.open(home)
    try:
        with control.store.transaction():
            for i in range(MAX_RULES):
                control.store.insert_cache_rule(CacheRule(f"app{i:04d}-cache", f"ghcr.io/acme/app{i:04d}",
                                                          f"app{i:04d}", None, T0))
    finally:
        control.close()
    session = start()
    keys(session, "2")
    wait_for_text(session, "1,000 of 1,000 rules")
    keys(session, "/")
    keys(session, "-l", "app0500")  # digits: blade keys everywhere but in the search box
    shown = wait_for_text(session, "1 of 1,000 rules match the search")
    assert "app0500-cache" in shown and "app0501-cache" not in shown and "app0499-cache" not in shown
    assert "Cache rules" in shown and "Upstreams" in shown  # still the rules blade, not blade 5
    keys(session, "Enter", "Escape")  # to the list, then clear the search
    shown = wait_for_text(session, "1,000 of 1,000 rules")
    keys(session, "G")
    wait_for_text(session, "app0999-cache")
    keys(session, "g")
    wait_for_text(session, "app0000-cache")
    quit_cleanly(session, home)


def test_the_tokens_blade(start, home, keyring_env):
    session = start()
    wait_for_text(session, "Client login  off: no client tokens")
    keys(session, "6")
    wait_for_text(session, "No client tokens")
    keys(session, "n")
    wait_for_text(session, "Create client token")
    keys(session, "-l", "ci-pull")
    keys(session, "Tab", "-l", "team/*")
    keys(session, "C-s")
    shown = wait_for_text(session, "Token ci-pull created")
    password = next(m[1] for line in shown.splitlines() if (m := re.search(r"▊ ([A-Za-z0-9_-]{43}) ", line)))
    control = ControlPlane.open(home)
    try:
        assert verify_password(password, control.get_token("ci-pull").password_hash)
    finally:
        control.close()
    keys(session, "Escape")
    shown = wait_for_text(session, "n Create")  # the blade's keys again: the password's dialog is gone
    shown = wait_for_text(session, "team/*")
    assert "1 client token · clients must log in" in shown and password not in shown
    listed = subprocess.run([regcache_executable(), "--home", str(home), "token", "list", "-o", "json"],
                            capture_output=True, text=True, timeout=30, env={**os.environ, **keyring_env})
    assert [t["name"] for t in json.loads(listed.stdout)] == ["ci-pull"]
    keys(session, "1")
    wait_for_text(session, "Client login  on: 1 client token")
    keys(session, "6")
    wait_for_text(session, "ci-pull")
    keys(session, "d")
    wait_for_text(session, "Delete token ci-pull?")
    keys(session, "y")
    wait_for_text(session, "No client tokens")
    quit_cleanly(session, home)


def test_checkbox_states_are_told_apart_in_plain_text(start, home):
    control = ControlPlane.open(home)
    try:
        control.create_rule("mcr-dotnet", "mcr.microsoft.com/dotnet/sdk", "dotnet/sdk",
                            serve_stale_on_error=True, serve_stale_if_deleted=False)
    finally:
        control.close()
    session = start()
    keys(session, "2")
    wait_for_text(session, "mcr-dotnet")
    keys(session, "s")
    shown = wait_for_text(session, "Serve cached tags the upstream deleted")
    assert "[x] Serve cached tags while the upstream fails" in shown  # capture-pane: characters, no colour
    assert "[ ] Serve cached tags the upstream deleted" in shown
    keys(session, "Tab", "Tab", "Space")  # freshness -> on error -> deleted, toggled
    wait_for_text(session, "[x] Serve cached tags the upstream deleted")
    keys(session, "C-s")
    wait_for_text(session, "n New")  # the form closed on its own: saved
    control = ControlPlane.open(home)
    try:
        deadline = time.monotonic() + 10
        while not control.get_rule("mcr-dotnet").serve_stale_if_deleted and time.monotonic() < deadline:
            time.sleep(0.2)
        assert control.get_rule("mcr-dotnet").serve_stale_if_deleted
    finally:
        control.close()
    keys(session, "n")
    shown = wait_for_text(session, "New cache rule")
    assert "(•) Select credentials" in shown and "( ) Create new credentials" in shown
    keys(session, "Escape")
    wait_for_text(session, "n New")
    time.sleep(0.5)  # a q right after ESC would reach the app as alt+q
    quit_cleanly(session, home)
