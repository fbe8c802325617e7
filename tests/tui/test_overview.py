"""The Overview's pictures: the last hour per minute as sparklines, cache size per rule as bars."""

from __future__ import annotations

import pytest
from textual.widgets import Sparkline

from regcache.tui.backend import Backend
from regcache.tui.blades.overview import OverviewBlade
from tests.helpers.pilot import screen_lines, wait_for

from .conftest import FLEET_NODE, NOW, T0, in_a_fleet, make_app

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


# -- the fleet (s3 storage, fleet-address and fleet-secret set) ------------------------------------------

def overview_text(app) -> str:
    return "\n".join(screen_lines(app))


async def test_the_fleet_line_lists_members_compactly_at_80_columns(filled_backend):
    app = make_app(in_a_fleet(filled_backend))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "this node" in overview_text(app))
        shown = overview_text(app)
        assert f"3 members, 2 live · this node {FLEET_NODE}" in shown
        rows = [line for line in screen_lines(app) if "ago" in line]
        assert len(rows) == 3 and "this node" in rows[0] and FLEET_NODE in rows[0]  # this node first
        assert "live, 2s ago" in rows[1] and "gone, 41s ago" in rows[2] and "configured differently" in rows[2]
        assert "http://10.0.0.1" not in shown  # addresses only where there is room
    async with make_app(in_a_fleet(filled_backend)).run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "this node" in overview_text(pilot.app))
        rows = [line for line in screen_lines(pilot.app) if "ago" in line]
        assert "http://10.0.0.11:5000" in rows[0] and "0.4.0" in rows[0]


async def test_the_fleet_line_says_when_there_is_none_or_the_bucket_cannot_be_read(filled_backend):
    from regcache.proxy.core.settings import StorageError

    def unreadable(backend):
        raise StorageError("cannot reach the object store at https://s3.example.com: is it running?")

    app = make_app(in_a_fleet(filled_backend, source=unreadable))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "members not read" in overview_text(app))
        assert "cannot reach the object store at https://s3.example.com" in overview_text(app)
    filled_backend.control.unset_setting("fleet-secret")  # s3 storage, no fleet: the Overview says how to make one
    app = make_app(Backend(filled_backend.control))  # the engine's own source: no fleet, so no bucket is read
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "none: set fleet-address and fleet-secret" in overview_text(app))
        assert not [line for line in screen_lines(app) if "ago" in line]


async def test_the_overview_reads_real_heartbeats_from_the_bucket(backend, swift_s3, s3_bucket, monkeypatch):
    """No fixed source: the Backend reads the bucket as `regcache fleet status` does (Swift s3api); a heartbeat
    written by anyone with the keys shows as text, its escapes and markup spelled out."""
    from regcache.proxy.core.fleet import Member
    from regcache.proxy.core.settings import FLEET_NODE_ID_SETTING, make_s3_storage
    from regcache.proxy.secrets import SecretResolver
    from regcache.proxy.storage.fleet import FleetMembership
    from regcache.proxy.storage.objectstore import ObjectStore
    from tests.scale_out.nodes import ACCESS_KEY_VAR, SECRET_KEY_VAR, s3_env

    for name, value in s3_env(swift_s3).items():
        monkeypatch.setenv(name, value)
    control = backend.control
    config = make_s3_storage(swift_s3.endpoint, s3_bucket, f"env://{ACCESS_KEY_VAR}", f"env://{SECRET_KEY_VAR}",
                             region=swift_s3.region)
    control.set_storage(config)
    control.set_setting("fleet-address", "http://127.0.0.1:5999")
    control.set_setting("fleet-secret", "env://FLEET_SECRET")
    control.store.set_setting(FLEET_NODE_ID_SETTING, "this-node-0000")
    mine = control.fleet_settings().fingerprint

    hostile = Member("evil\x1b[2J[bold]x", "http://127.0.0.1:6001", mine, "[@click=app.quit]\x07", 1)
    async with ObjectStore(config, SecretResolver()) as objects:
        for member in (Member("this-node-0000", "http://127.0.0.1:5999", mine, "0.4.0", 0),
                       Member("peer-node-1111", "http://127.0.0.1:6000", mine, "0.4.1", 0)):
            await FleetMembership(objects, member).beat()
        await objects.write(objects.member_key(hostile.node_id), hostile.to_json(), "application/json")
    app = make_app(backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "peer-node-1111" in overview_text(app), timeout=30)
        shown = overview_text(app)
        assert "3 members, 3 live · this node this-node-0000" in shown
        assert "0.4.1" in shown and "http://127.0.0.1:6000" in shown
        assert "evil\\x1b[2J[bold]x" in shown and "[@click=app.quit]\\x07" in shown
        assert "\x1b" not in shown and app.is_running

