"""SVG snapshots of every blade at 80x24 and 120x40 (pytest-textual-snapshot).

Regenerate after an intended change with ``python -m pytest tests/tui/test_snapshots.py --snapshot-update``
and review the SVGs in tests/tui/__snapshots__/.
"""

from __future__ import annotations

import re
import time

import pytest
from textual.widgets import Input

from regcache.proxy.secrets import KeyringLock
from regcache.tui.blades.base import Blade
from regcache.tui.screens.unlock import UnlockScreen
from tests.helpers.pilot import screen_lines, type_into

from .conftest import in_a_fleet, make_app

SIZES = [(80, 24), (120, 40)]


@pytest.fixture(autouse=True)
def no_refresh_timers(monkeypatch):
    """A snapshot is of what a blade drew from the fixed data, not of when its timer reloads it: on a loaded
    machine a test takes longer than a blade's refresh interval, and a reload starting between the last look
    and the screenshot could be half drawn in it. (Reloading is tested in test_blades.py and test_activity.py.)"""
    blades = [Blade]
    while blades:
        blade = blades.pop()
        monkeypatch.setattr(blade, "REFRESH_SECONDS", 24 * 3600.0)
        blades.extend(blade.__subclasses__())


async def settle(pilot, timeout: float = 30.0) -> None:
    """Wait until the blades' loading workers finished and the screen stopped changing.

    A DataTable sizes its columns to the rows on a later refresh, and a size computed on a widget's idle
    may reach the screen's layout later still: on a loaded machine (a CI run, another process keeping both
    cores busy) a snapshot taken right after the rows arrived once showed the columns at their headers'
    widths. So: every worker finished (a blade runs one load at a time, so a finished load has shown
    what it read), nothing left to animate, then the screen laid out again and drawn the same twice in a row.
    A focused field's blinking cursor would be on in one snapshot and off in the next: it is made steady.
    """
    app = pilot.app
    deadline = time.monotonic() + timeout
    previous: str | None = None
    while time.monotonic() < deadline:
        await pilot.pause()
        if not all(worker.is_finished for worker in app.workers):
            previous = None
            continue
        await pilot.wait_for_scheduled_animations()
        for field in app.screen.query(Input):
            field.cursor_blink = False  # steady: shown while focused
        app.screen.refresh(layout=True)
        await pilot.pause()
        # what the snapshot will hold (a modal screen's background included), without its random ids
        drawn = re.sub(r"terminal-\d+", "terminal", app.export_screenshot())
        if drawn == previous:
            return
        previous = drawn
    raise AssertionError("the screen never settled:\n" + "\n".join(screen_lines(app)))


BLADES = [("overview", "1"), ("rules", "2"), ("credentials", "3"), ("activity", "4"), ("upstreams", "5"),
          ("tokens", "6")]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("blade", "key"), BLADES, ids=[b for b, _ in BLADES])
def test_blade(snap_compare, filled_backend, blade, key, size):
    async def show(pilot):
        await pilot.press(key)
        await settle(pilot)

    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=show)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_overview_in_a_fleet(snap_compare, filled_backend, size):
    """The Fleet line and its members: compact at 80 columns, with their addresses at 120."""
    assert snap_compare(make_app(in_a_fleet(filled_backend)), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_new_rule_form(snap_compare, filled_backend, size):
    async def open_form(pilot):
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)

    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=open_form)


def opening(*keys: str):
    """A ``run_before`` that presses ``keys`` one at a time, letting the screen settle after each."""
    async def run(pilot):
        for key in keys:
            await pilot.press(key)
            await settle(pilot)

    return run


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_rule_details(snap_compare, filled_backend, size):
    """The repositories, the digest of each tag, and the purge keys."""
    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=opening("2", "enter"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_rules_search(snap_compare, filled_backend, size):
    assert snap_compare(make_app(filled_backend), terminal_size=size,
                        run_before=opening("2", "slash", "t", "e", "a", "m"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_rule_settings(snap_compare, filled_backend, size):
    """Checkboxes on ([x]) and off ([ ]) told apart without colour."""
    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=opening("2", "s"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_credential_form(snap_compare, filled_backend, size):
    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=opening("3", "n"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_credential_details(snap_compare, filled_backend, size):
    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=opening("3", "down", "enter"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_token_form(snap_compare, filled_backend, size):
    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=opening("6", "n"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_token_password(snap_compare, filled_backend, size):
    """The once-shown password (a fixed one here: a generated one differs every run)."""
    from regcache.tui.screens.token_form import TokenPasswordScreen

    async def show(pilot):
        await pilot.press("6")
        await settle(pilot)
        token = filled_backend.control.get_token("ci-pull")
        password = "Xq7-1fixedPasswordForTheSnapshot0123456789ab"
        pilot.app.push_screen(TokenPasswordScreen(token, password, "127.0.0.1:5000"))
        await settle(pilot)

    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=show)


# -- the start-up keyring dialog (tui/screens/unlock.py): a stand-in keyring with a fixed path --------------

class EncryptedKeyring:
    """Looks like keyrings.alt's backend to regcache.proxy.secrets: a file, a key it lacks, a reference entry."""

    file_path = "/root/.local/share/python_keyring/crypted_pass.cfg"

    def _unlock(self) -> None:  # pragma: no cover - never called: regcache never lets a backend prompt
        raise AssertionError("prompted")

    def get_password(self, service: str, name: str) -> str | None:
        return "password reference value" if vars(self).get("keyring_key") == "right" else None


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_unlock_modal(snap_compare, filled_backend, size):
    async def ask(pilot):
        await settle(pilot)
        pilot.app.push_screen(UnlockScreen(KeyringLock([EncryptedKeyring()])))
        await settle(pilot)

    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=ask)


def test_unlock_modal_after_a_wrong_password(snap_compare, filled_backend):
    async def wrong(pilot):
        await settle(pilot)
        pilot.app.push_screen(UnlockScreen(KeyringLock([EncryptedKeyring()])))
        await settle(pilot)
        await type_into(pilot, "#unlock-password", "typo")
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(make_app(filled_backend), terminal_size=(80, 24), run_before=wrong)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_event_details(snap_compare, filled_backend, size):
    async def open_details(pilot):
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("enter")  # the table has the focus: the newest event (an error)
        await settle(pilot)

    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=open_details)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help(snap_compare, filled_backend, size):
    async def open_help(pilot):
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)

    assert snap_compare(make_app(filled_backend), terminal_size=size, run_before=open_help)
