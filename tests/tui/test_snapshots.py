"""SVG snapshots of every blade at 80x24 and 120x40 (pytest-textual-snapshot).

Regenerate after an intended change with ``python -m pytest tests/tui/test_snapshots.py --snapshot-update``
and review the SVGs in tests/tui/__snapshots__/.
"""

from __future__ import annotations

import pytest

from regcache.proxy.secrets import KeyringLock
from regcache.tui.screens.unlock import UnlockScreen
from tests.helpers.pilot import type_into

from .conftest import make_app

SIZES = [(80, 24), (120, 40)]


async def settle(pilot) -> None:
    """Wait until the blades' loading workers finished and the screen caught up.

    A DataTable sizes its columns to the rows on a later refresh: on a loaded machine (a CI run) a
    snapshot taken right after the rows arrived once showed the columns at their headers' widths.
    """
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.1)
    # By now the tables have sized their columns to their rows, but a size computed on the table's own
    # idle may not have reached the screen's layout yet (a loaded machine once showed the header widths):
    # lay the screen out again before the snapshot.
    pilot.app.screen.refresh(layout=True)
    await pilot.pause()
    await pilot.pause(0.05)


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
