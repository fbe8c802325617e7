"""Driving the Textual app in a test (Pilot): type, read tables, wait for a condition."""

from __future__ import annotations

from textual.widgets import DataTable, Input


async def type_into(pilot, selector: str, text: str) -> None:
    pilot.app.screen.query_one(selector, Input).focus()
    await pilot.pause()
    await pilot.press(*text)


def table_keys(app, selector: str) -> list[str]:
    table = app.query_one(selector, DataTable)
    return [str(row.value) for row in table.rows]


async def wait_for(pilot, condition, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    assert condition()


def screen_lines(app) -> list[str]:
    """The characters of the screen as drawn now, one string a line (the compositor's strips: what
    the driver would send to the terminal, without the styles)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]
