"""The Activity blade with real pulls: skopeo through the TUI's embedded proxy from a loopback registry."""

from __future__ import annotations

import anyio
import pytest
from textual.widgets import DataTable

from regcache.proxy.server import EmbeddedProxy, ProxyServer
from regcache.tui.app import RegcacheApp
from tests.helpers.pilot import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_activity_shows_a_miss_then_a_hit(backend, home, anonymous_registry, push_image, skopeo, tmp_path):
    backend.control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
    backend.control.create_rule("live-app", f"{anonymous_registry.host}/library/live", "live")
    push_image(anonymous_registry, "library/live", "1", layers=[50_000])
    app = RegcacheApp(backend, EmbeddedProxy(ProxyServer(home, "127.0.0.1:0")))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.proxy_status.state == "running")
        assert app.sub_title.startswith("proxy http://127.0.0.1:")
        address = app.proxy_status.address
        await pilot.press("4")
        # real pulls, off the UI loop: a cold one (misses) and a warm one (hits)
        for name in ("cold", "warm"):
            await anyio.to_thread.run_sync(skopeo.copy_to_oci, f"{address}/live:1", tmp_path / name, "1")
        table = app.query_one("#activity-table", DataTable)

        def results() -> list[str]:
            return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]

        await wait_for(pilot, lambda: "hit" in results() and "miss" in results(), timeout=15)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert {str(r[2]).split("@")[0].split(":")[0] for r in rows} == {"live"}  # the image: live:1, live@sha256:…
        assert {str(r[4]) for r in rows} == {"live-app"}  # the rule
        tools = {str(r[5]).split()[0] for r in rows}  # the client: skopeo's tool, then its address
        assert tools <= {"skopeo", "podman/skopeo"} and tools, tools
        assert results()[0] == "hit"  # newest first
        totals = str(app.query_one("#activity-totals").render())
        assert "hits 50%" in totals or "hit" in totals

        # the filter narrows the log to misses
        await pilot.press("slash", *"miss", "enter")
        await pilot.pause(0.2)
        assert set(results()) == {"miss"}
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert "hit" in results()

        # the Overview counts the same pulls
        from regcache.tui.blades.overview import OverviewBlade

        await pilot.press("1")
        overview = app.query_one(OverviewBlade)
        await wait_for(pilot, lambda: overview.data is not None and overview.data.totals.hits > 0)
        assert overview.data.totals.misses > 0 and overview.data.repositories == 1
