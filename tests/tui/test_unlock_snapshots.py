"""SVG snapshots of the start-up keyring modal (tui/screens/unlock.py) at 80x24 and 120x40, asking and after a
wrong password. The keyring is a stand-in with a fixed path, so the pictures do not depend on the test's tmp dir.

Regenerate after an intended change with ``--snapshot-update`` and review the SVGs in tests/tui/__snapshots__/.
"""

from __future__ import annotations

import pytest

from regcache.proxy.secrets import KeyringLock
from regcache.tui.screens.unlock import UnlockScreen
from tests.helpers.pilot import type_into

from .conftest import make_app
from .test_snapshots import SIZES, settle


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
