"""The real `regcache` TUI at 80x24 under tmux (issue 15): the help screen on ? and F1, and a failed pull by a
real client whose reason, rule and tool the Activity blade shows, whole on Enter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from regcache.proxy.config.control import ControlPlane
from tests.helpers.tmux import keys, quit_cleanly, screen, start_tui, wait_for_text
from tests.registries.skopeo import SkopeoError

pytestmark = pytest.mark.slow


@pytest.fixture
def session(home, keyring_env):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: apt-get install -y tmux", pytrace=False)
    name = f"regcache-activity-{os.getpid()}"

    def start() -> str:
        return start_tui(name, home, keyring_env)

    yield start
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=30)


def test_help_lists_the_keys_of_the_screen_shown(session, home):
    name = session()
    wait_for_text(name, "running")
    assert "? Help" in screen(name)  # the footer says where help is
    keys(name, "4")
    wait_for_text(name, "/ filter")
    keys(name, "?")
    shown = wait_for_text(name, "Keys: Activity")
    for line in ("Activity blade", "Filter", "Details", "Clear filter", "Tables", "Cursor down"):
        assert line in shown, shown
    keys(name, "End")  # at 80x24 the rest is below: the keys scroll
    shown = wait_for_text(name, "? f1")  # the last lines, once the scroll ended
    assert "Everywhere" in shown and "Go to Upstreams" in shown, shown
    keys(name, "Escape")
    shown = wait_for_text(name, "/ filter")
    assert "Keys: Activity" not in shown
    keys(name, "/", "?")  # in the filter "?" is typed; F1 is help there too
    wait_for_text(name, "?")
    assert "Keys:" not in screen(name)
    keys(name, "F1")
    shown = wait_for_text(name, "Keys: Activity")
    assert "Text fields" in shown, shown
    keys(name, "Escape", "Escape", "2", "n")
    wait_for_text(name, "New cache rule")
    keys(name, "F1")  # on a modal form
    shown = wait_for_text(name, "Keys: New cache rule")
    assert "Save" in shown and "This screen" in shown, shown
    keys(name, "Escape", "Escape")
    wait_for_text(name, "No cache rules yet")
    quit_cleanly(name, home)


def test_a_failed_pull_shows_its_reason_rule_and_tool_in_activity(session, home, anonymous_registry, push_image,
                                                                   skopeo):
    push_image(anonymous_registry, "library/app", "1")
    control = ControlPlane.open(home)
    try:
        control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
        control.create_rule("lib-all", f"{anonymous_registry.host}/library/*", "lib/*")
    finally:
        control.close()
    name = session()
    port = int(re.search(r"proxy http://127\.0\.0\.1:(\d+)", wait_for_text(name, "running"))[1])
    # a real client asks for a tag the upstream does not have
    with pytest.raises(SkopeoError, match="has no tag 'missing'"):
        skopeo.run("inspect", "--tls-verify=false", "--raw", f"docker://127.0.0.1:{port}/lib/app:missing")
    control = ControlPlane.open(home)
    try:
        deadline = time.monotonic() + 10
        while not (errors := control.store.recent_errors(1)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        control.close()
    assert errors, "the proxy recorded no error event"
    reason = errors[0]["detail"]
    assert reason and errors[0]["user_agent"], errors[0]
    keys(name, "4")
    shown = wait_for_text(name, "error 404")
    row = next(line for line in shown.splitlines() if "error 404" in line)
    assert "lib/app:missing" in row and reason[:8] in row, shown  # the reason starts on its row
    assert reason[:40] in shown, shown  # and the row under the cursor shows more of it below the table
    keys(name, "Enter")
    shown = wait_for_text(name, "User-Agent")
    flat = " ".join(shown.split())
    for expected in ("Rule lib-all", "Result error (HTTP 404)", "Reference missing", "Tool skopeo"):
        if expected == "Tool skopeo" and "Tool podman/skopeo" in flat:
            continue  # skopeo sent containers/image's default User-Agent
        assert expected in flat, shown
    assert " ".join(reason.split())[:60] in flat, shown  # the whole reason, wrapped
    keys(name, "Escape")
    wait_for_text(name, "/ filter")
    keys(name, "/", "-l", "result:hit")
    time.sleep(0.5)
    assert "error 404" not in screen(name)  # the filter is exact: the error is not a hit
    keys(name, "Escape")
    wait_for_text(name, "error 404")
    quit_cleanly(name, home)
