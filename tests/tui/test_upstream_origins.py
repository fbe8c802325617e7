"""The Upstreams blade and form: an upstream's allowed origins are set in the form and shown below the table."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Static

from regcache.tui.screens.upstream_form import UpstreamForm
from tests.helpers.pilot import table_keys, type_into, wait_for

from .conftest import make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _origins_line(app) -> str:
    return str(app.query_one("#upstream-origins", Static).render())


async def test_allowed_origins_are_set_in_the_form_and_shown_for_the_highlighted_upstream(backend):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await wait_for(pilot, lambda: "docker.io" in table_keys(app, "#upstreams-table"))
        await wait_for(pilot, lambda: "https://auth.docker.io:443" in _origins_line(app))  # the built-in's realm
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, UpstreamForm))
        await type_into(pilot, "#login-server", "harbor.test:8443")
        await type_into(pilot, "#url", "https://harbor.test:8443")
        await type_into(pilot, "#allow-origins", "http://auth.test")  # plain http for an https upstream
        await pilot.press("ctrl+s")
        error = app.screen.query_one("#allow_origin-error", Static)
        await wait_for(pilot, lambda: error.display and "never follows https to http" in str(error.render()))
        app.screen.query_one("#allow-origins").value = ""
        await type_into(pilot, "#allow-origins", "https://auth.test, https://cdn.test:8443")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "harbor.test:8443" in table_keys(app, "#upstreams-table"))
        assert backend.control.catalogue().get("harbor.test:8443").allowed_origins == (
            "https://auth.test:443", "https://cdn.test:8443")
        table = app.query_one("#upstreams-table", DataTable)
        table.move_cursor(row=table_keys(app, "#upstreams-table").index("harbor.test:8443"))
        await wait_for(pilot, lambda: "https://auth.test:443, https://cdn.test:8443" in _origins_line(app))
