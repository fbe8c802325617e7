"""The key bar: the keys that work now on one line, redrawn only when they change, a click presses a key."""

from __future__ import annotations

import pytest

from regcache.tui.widgets.key_bar import KeyBar
from tests.helpers.pilot import screen_lines, wait_for

from .conftest import make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def bar(app) -> str:
    return screen_lines(app)[-1]


async def test_the_bar_shows_the_focused_blades_keys_and_follows_the_focus(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "q Quit" in bar(app) and "? Help" in bar(app) and "New" not in bar(app)
        await pilot.press("2")
        await wait_for(pilot, lambda: "n New" in bar(app))
        # every key of the Cache rules blade fits at 80 columns (the palette's key goes where there is no room)
        assert all(key in bar(app) for key in ("n New", "d Delete", "/ Search", "q Quit", "? Help")), bar(app)
        await pilot.press("1")
        await wait_for(pilot, lambda: "New" not in bar(app))


async def test_the_bar_shows_the_palette_key_on_the_right_when_there_is_room(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert bar(app).rstrip().endswith("^p palette"), bar(app)


async def test_the_bar_is_one_widget_and_is_not_redrawn_when_the_keys_stay_the_same(filled_backend, monkeypatch):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        key_bar = app.query_one(KeyBar)
        assert list(key_bar.children) == []  # no widget per key to rebuild at each focus change
        redraws = []
        monkeypatch.setattr(key_bar, "refresh", lambda *a, **k: redraws.append(1))
        key_bar._bindings_changed(app.screen)  # the same keys: nothing to draw
        assert redraws == []
        await pilot.press("2")
        await wait_for(pilot, lambda: redraws != [])


async def test_a_click_on_a_key_presses_it(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        column = bar(app).index("? Help")
        await pilot.click(KeyBar, offset=(column + 1, 0))
        await wait_for(pilot, lambda: "Help" in app.screen.__class__.__name__)
