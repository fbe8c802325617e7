"""The Overview's pictures: the last hour per minute as sparklines, cache size per rule as bars."""

from __future__ import annotations

import pytest
from textual.widgets import Sparkline

from regcache.tui.blades.overview import OverviewBlade
from tests.helpers.pilot import screen_lines, wait_for

from .conftest import NOW, T0, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_the_last_hour_and_the_cache_per_rule_are_drawn(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        overview = app.query_one(OverviewBlade)
        await wait_for(pilot, lambda: overview.data is not None)
        minutes = overview.data.minutes
        assert len(minutes) == 60 and minutes[-1].start == NOW.replace(second=0)
        at = next(i for i, m in enumerate(minutes) if m.start == T0.replace(second=0))
        requests = app.query_one("#trend-requests", Sparkline).data
        assert requests[at] == 6 and sum(requests) == 6  # the six fixed events, in their minute
        assert app.query_one("#trend-hit-ratio", Sparkline).data[at] == pytest.approx(3 / 5)
        assert app.query_one("#trend-fetched", Sparkline).data[at] == 29_360_128
        await pilot.pause()
        shown = "\n".join(screen_lines(app))
        assert "Last hour, per minute (08:41-09:40 UTC)" in shown
        assert "6 in all" in shown and "28 MiB" in shown
        bars = [line for line in screen_lines(app) if "ubuntu" in line or "team-ghcr" in line]
        assert any("█" * 20 + " 28 MiB" in line for line in bars)  # the largest: a full bar
        assert any("team-ghcr" in line and "░" * 20 in line and "0 B" in line for line in bars)
