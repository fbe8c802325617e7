"""The TUI's operations actions: rule settings, warm, rule test, client configuration, rules file."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Static, TextArea

from regcache.tui.screens.config_files import ClientConfigScreen, RulesFileScreen
from regcache.tui.screens.image_action import ImageActionScreen
from regcache.tui.screens.rule_settings import RuleSettingsForm
from tests.helpers.pilot import table_keys, type_into, wait_for
from tests.helpers.state import cached_tag

from .conftest import make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def select_rule(pilot, app, name: str) -> None:
    await pilot.press("2")
    await wait_for(pilot, lambda: name in table_keys(app, "#rules-table"))
    table = app.query_one("#rules-table", DataTable)
    table.focus()
    table.move_cursor(row=table_keys(app, "#rules-table").index(name))
    await pilot.pause()


async def test_rule_settings_form(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await select_rule(pilot, app, "team-ghcr")
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleSettingsForm))
        app.screen.query_one("#freshness", Input).value = ""
        await type_into(pilot, "#freshness", "10m")
        await type_into(pilot, "#sync-tags", "semver:>=1,<2")
        await type_into(pilot, "#retention", "0")
        await pilot.press("ctrl+s")
        error = app.screen.query_one("#retention-error", Static)
        await wait_for(pilot, lambda: error.display)
        assert "longer than 0" in str(error.render())
        app.screen.query_one("#retention", Input).value = ""
        await type_into(pilot, "#retention", "30d")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, RuleSettingsForm))
    rule = filled_backend.control.get_rule("team-ghcr")
    assert (rule.freshness, rule.retention, rule.sync_tags) == (600, 30 * 86400, "semver:>=1,<2")


async def test_warm_and_test_through_the_tui(backend, anonymous_registry, push_image):
    backend.control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
    backend.control.create_rule("warm-tui", f"{anonymous_registry.host}/library/*", "lib/*")
    image = push_image(anonymous_registry, "library/tuiwarm", "1", layers=[20_000])
    app = make_app(backend)
    async with app.run_test(size=(100, 30)) as pilot:
        await select_rule(pilot, app, "warm-tui")
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageActionScreen))
        await type_into(pilot, "#image", "lib/tuiwarm:1")
        await pilot.press("enter")
        outcome = app.screen.query_one("#outcome", Static)
        await wait_for(pilot, lambda: image.digest in str(outcome.render()))
        assert cached_tag(backend.control.store, "lib/tuiwarm", "1") is None  # a test caches nothing
        await pilot.press("escape")
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageActionScreen))
        await type_into(pilot, "#image", "lib/tuiwarm:1")
        await pilot.press("enter")
        outcome = app.screen.query_one("#outcome", Static)
        await wait_for(pilot, lambda: "fetched" in str(outcome.render()))
    assert cached_tag(backend.control.store, "lib/tuiwarm", "1") is not None


async def test_client_config_and_rules_file(filled_backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(filled_backend)
    async with app.run_test(size=(100, 30)) as pilot:
        app.show_client_config()
        await wait_for(pilot, lambda: isinstance(app.screen, ClientConfigScreen) and app.screen.query(TextArea))
        files = app.screen.query_one(TextArea)
        await wait_for(pilot, lambda: "docker.io/hosts.toml" in files.text)
        assert '[host."http://127.0.0.1:5000"]' in files.text  # the listen address, not localhost
        await pilot.press("escape")
        app.push_screen(RulesFileScreen())
        await wait_for(pilot, lambda: isinstance(app.screen, RulesFileScreen) and app.screen.query(TextArea))
        files = app.screen.query_one(TextArea)
        await wait_for(pilot, lambda: "cacheRules:" in files.text)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: (tmp_path / "regcache-rules.yaml").exists())
        path = tmp_path / "regcache-rules.yaml"
        path.write_text(path.read_text().replace("name: all-mcr", "name: all-mcr-renamed"))
        await pilot.click("#plan")
        status = app.screen.query_one("#status", Static)
        await wait_for(pilot, lambda: "planned" in str(status.render()) or "error" in str(status.render()))
        assert "+ cache rule all-mcr-renamed" in files.text, str(status.render())
        assert [r.name for r in filled_backend.control.list_rules()] == ["ubuntu", "all-mcr", "team-ghcr"]
        await pilot.press("ctrl+y")
        from regcache.tui.screens.confirm import ConfirmScreen

        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, RulesFileScreen)
                       and "applied" in str(app.screen.query_one("#status", Static).render()))
    assert sorted(r.name for r in filled_backend.control.list_rules()) == ["all-mcr-renamed", "team-ghcr", "ubuntu"]


@pytest.mark.parametrize(("content", "said"), [(b"\xff\xfe\x00binary\x00" * 100, "binary"),
                                               (b"cacheRules: []\nname: caf\xe9\n", "UTF-8")])
async def test_a_binary_rules_file_is_one_clear_error_in_the_tui(filled_backend, tmp_path, monkeypatch, content,
                                                                 said):
    """The TUI reads a rules file as the CLI does: bounded, UTF-8 or one line saying why, never a crash."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "regcache-rules.yaml").write_bytes(content)
    app = make_app(filled_backend)
    async with app.run_test(size=(100, 30)) as pilot:
        app.push_screen(RulesFileScreen())
        await wait_for(pilot, lambda: isinstance(app.screen, RulesFileScreen) and app.screen.query(TextArea))
        await pilot.click("#plan")
        status = app.screen.query_one("#status", Static)
        await wait_for(pilot, lambda: "error" in str(status.render()))
        assert said in str(status.render()), str(status.render())
        assert app.is_running
    assert [r.name for r in filled_backend.control.list_rules()] == ["ubuntu", "all-mcr", "team-ghcr"]


async def test_warm_shows_each_layers_progress_while_it_runs(backend, anonymous_registry, push_image):
    from tests.proxy.fronts import THROTTLE, FaultyFront

    image = push_image(anonymous_registry, "library/tuislow", "1", layers=[4_000_000])
    front = FaultyFront(anonymous_registry.url, THROTTLE).start()  # ~0.3 s of bytes: progress while it runs
    front.throttle_delay = 0.05
    try:
        backend.control.add_upstream(front.host, front.url, "anonymous")
        backend.control.create_rule("warm-slow", f"{front.host}/library/*", "lib/*")
        app = make_app(backend)
        async with app.run_test(size=(80, 24)) as pilot:
            await select_rule(pilot, app, "warm-slow")
            await pilot.press("w")
            await wait_for(pilot, lambda: isinstance(app.screen, ImageActionScreen))
            await type_into(pilot, "#image", "lib/tuislow:1")
            await pilot.press("enter")
            outcome = app.screen.query_one("#outcome", Static)
            seen: list[str] = []

            def progressed() -> bool:
                seen.append(str(outcome.render()))
                return "fetched" in seen[-1] and "from the upstream" in seen[-1]

            await wait_for(pilot, progressed, timeout=30)
    finally:
        front.stop()
    layer = image.layers[0].digest[:19]
    during = [s for s in seen if "ETA" in s and layer in s and "fetching" in s]
    assert during, seen
    assert "lib/tuislow:1: " in during[-1] and "of 2 blobs" in during[-1] and "/s" in during[-1]
    assert "working..." not in seen[-1]
