"""The TUI driven by Textual's Pilot: forms, validation beside the field, credentials, deletion."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Select, Static

from regcache.proxy.secrets import SecretResolver
from regcache.tui.screens.confirm import ConfirmScreen
from regcache.tui.screens.rule_form import RuleForm
from tests.helpers.pilot import table_keys, type_into, wait_for

from .conftest import make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def open_new_rule_form(pilot) -> RuleForm:
    await pilot.press("2")
    await pilot.pause()
    await pilot.press("n")
    await pilot.pause()
    assert isinstance(pilot.app.screen, RuleForm)
    return pilot.app.screen


async def choose(pilot, selector: str, value: str) -> None:
    """Pick an option of a Select with the keyboard: open it, arrow down to ``value``, enter."""
    select = pilot.app.screen.query_one(selector, Select)
    select.focus()
    await pilot.pause()
    values = [v for _, v in select._options if v is not Select.NULL]
    await pilot.press("enter")
    await pilot.pause()
    current = values.index(select.value) if select.value in values else -1
    steps = values.index(value) - current
    for _ in range(abs(steps)):
        await pilot.press("down" if steps > 0 else "up")
    await pilot.press("enter")
    await pilot.pause()
    assert select.value == value


async def test_create_static_rule_through_the_form(backend):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_new_rule_form(pilot)
        await type_into(pilot, "#name", "acme-app")
        await choose(pilot, "#login-server", "ghcr.io")
        await type_into(pilot, "#path", "acme/app")
        await type_into(pilot, "#target", "app")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, RuleForm))
        await wait_for(pilot, lambda: table_keys(app, "#rules-table") == ["acme-app"])
    rule = backend.control.get_rule("acme-app")
    assert (rule.source_repository, rule.target_repository, rule.credential_set) == ("ghcr.io/acme/app", "app",
                                                                                       None)


async def test_create_wildcard_rule_and_overlap_shown_beside_the_field(backend):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_new_rule_form(pilot)
        await type_into(pilot, "#name", "all-mcr")
        await choose(pilot, "#login-server", "mcr.microsoft.com")
        await type_into(pilot, "#path", "*")
        await type_into(pilot, "#target", "*")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, RuleForm))
        assert backend.control.get_rule("all-mcr").target_repository == "*"

        form = await open_new_rule_form(pilot)
        await type_into(pilot, "#name", "lib-ghcr")
        await choose(pilot, "#login-server", "ghcr.io")
        await type_into(pilot, "#path", "library/*")
        await type_into(pilot, "#target", "library/*")
        await pilot.press("ctrl+s")
        error = form.query_one("#target-error", Static)
        await wait_for(pilot, lambda: error.display and "overlaps" in str(error.render()))
        assert "overlaps the wildcard rule 'all-mcr'" in str(error.render())
        assert isinstance(app.screen, RuleForm)  # the form stays open to fix the input
        await pilot.press("escape")
        await pilot.pause()
    assert [r.name for r in backend.control.list_rules()] == ["all-mcr"]


async def test_create_credentials_in_the_keyring(backend, home):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        await choose(pilot, "#login-server", "ghcr.io")
        await type_into(pilot, "#cred-name", "ghcr-login")
        await type_into(pilot, "#cred-username", "octocat")
        await type_into(pilot, "#cred-password", "ghp_tuiSECRET123")
        # masked while typed
        password = app.screen.query_one("#cred-password", Input)
        assert password.password  # rendered as bullets
        assert "ghp_tuiSECRET123" not in app.export_screenshot()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: table_keys(app, "#credentials-table") == ["ghcr-login"])
        screen_text = app.export_screenshot()
    cs = backend.control.get_credential_set("ghcr-login")
    assert cs.username_secret_id == "keyring://regcache/ghcr-login-username"
    assert cs.health.status.value == "Unknown"  # no upstream login yet
    assert all(a.readable for a in backend.control.secret_access(cs))
    assert SecretResolver().get(cs.password_secret_id) == "ghp_tuiSECRET123"
    assert "ghp_tuiSECRET123" not in screen_text and "octocat" not in screen_text
    for path in home.iterdir():
        if path.is_file():
            assert b"ghp_tuiSECRET123" not in path.read_bytes()


async def test_rule_with_new_inline_credentials_and_attach_remove(backend):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_new_rule_form(pilot)
        await type_into(pilot, "#name", "private-app")
        await choose(pilot, "#login-server", "ghcr.io")
        await type_into(pilot, "#path", "acme/private")
        await pilot.click("#auth")
        await pilot.pause()
        await pilot.click("#create-creds")
        await pilot.pause()
        assert form.query_one("#new-creds").display
        await type_into(pilot, "#cred-name", "ghcr-inline")
        await type_into(pilot, "#cred-username", "octocat")
        await type_into(pilot, "#cred-password", "inline-token-9")
        await type_into(pilot, "#target", "private")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: table_keys(app, "#rules-table") == ["private-app"])
        assert backend.control.get_rule("private-app").credential_set == "ghcr-inline"

        # remove the credential set from the rule (e), then attach it again
        app.query_one("#rules-table", DataTable).focus()
        await pilot.press("e")
        await pilot.pause()
        await choose(pilot, "#credential-set", "-")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: backend.control.get_rule("private-app").credential_set is None)
        await pilot.press("e")
        await pilot.pause()
        await choose(pilot, "#credential-set", "ghcr-inline")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: backend.control.get_rule("private-app").credential_set == "ghcr-inline")


async def test_docker_hub_without_credentials_is_refused_beside_the_field(backend):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_new_rule_form(pilot)
        await type_into(pilot, "#name", "ubuntu")
        await type_into(pilot, "#path", "library/ubuntu")
        await type_into(pilot, "#target", "ubuntu")
        await pilot.press("ctrl+s")
        error = form.query_one("#credential_set-error", Static)
        await wait_for(pilot, lambda: error.display)
        assert "choose credentials for docker.io" in str(error.render())


async def test_delete_asks_first(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: table_keys(app, "#rules-table") == ["ubuntu", "all-mcr", "team-ghcr"])
        app.query_one("#rules-table", DataTable).focus()
        await pilot.press("down", "d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert [r.name for r in filled_backend.control.list_rules()] == ["ubuntu", "all-mcr", "team-ghcr"]
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: table_keys(app, "#rules-table") == ["ubuntu", "team-ghcr"])
    assert [r.name for r in filled_backend.control.list_rules()] == ["ubuntu", "team-ghcr"]


async def test_command_palette_has_every_action(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for title in ("New cache rule (n)", "Edit rule credentials (e)", "Delete cache rule (d)",
                      "Cache rule details (⏎)", "Create credentials (n)", "Re-check credentials (r)",
                      "Delete credentials (d)", "Filter activity (/)", "Add upstream (a)", "Remove upstream (x)",
                      "Go to Activity (4)", "Help: keys of this screen (? f1)"):
            assert title in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"new cache rule")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleForm))


async def test_port_taken_is_said_plainly_and_rules_still_work(backend, home):
    import socket

    from regcache.proxy.server import EmbeddedProxy, ProxyServer
    from regcache.tui.app import RegcacheApp

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = RegcacheApp(backend, EmbeddedProxy(ProxyServer(home, f"127.0.0.1:{port}")))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.proxy_status.state == "stopped" and app.proxy_status.error)
            assert "already in use" in app.sub_title
            await open_new_rule_form(pilot)
            await type_into(pilot, "#name", "still-works")
            await choose(pilot, "#login-server", "ghcr.io")
            await type_into(pilot, "#path", "acme/x")
            await type_into(pilot, "#target", "x")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: table_keys(app, "#rules-table") == ["still-works"])


@pytest.fixture
def unfrozen():
    """The cyclic collector's state as a test process needs it: nothing frozen before, everything back after."""
    import gc

    gc.unfreeze()
    yield gc
    gc.unfreeze()


@pytest.mark.parametrize("freeze", [True, False])
async def test_the_heap_is_frozen_once_the_embedded_proxy_runs_only_when_asked(backend, home, unfrozen, freeze):
    """``regcache tui`` freezes its startup heap (full collections walked ~110,000 objects at every one, 70-90 ms
    with all threads stopped: the tail of a key press); an app built without ``freeze_heap`` (tests) leaves the
    collector alone."""
    from regcache.proxy.server import EmbeddedProxy, ProxyServer
    from regcache.tui.app import RegcacheApp

    app = RegcacheApp(backend, EmbeddedProxy(ProxyServer(home, "127.0.0.1:0")), freeze_heap=freeze)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.proxy_status.state == "running")
        if freeze:
            await wait_for(pilot, lambda: unfrozen.get_freeze_count() > 0)
            assert unfrozen.get_freeze_count() > 10_000  # the modules and the app, not a handful of objects
            # frozen: out of the generations every collection walks (get_objects lists those)
            assert not any(o is app for o in unfrozen.get_objects())
            assert not any(o is app.proxy.server for o in unfrozen.get_objects())
        else:
            await pilot.pause(0.2)
            assert unfrozen.get_freeze_count() == 0
            assert any(o is app for o in unfrozen.get_objects())


def test_regcache_tui_runs_the_app_with_its_heap_frozen(home, keyring_env, monkeypatch):
    """``run_app`` (what ``regcache tui`` calls) asks for the freeze; the proxy it builds is the app's."""
    from regcache.tui import logs
    from regcache.tui.app import RegcacheApp, run_app

    built: list[RegcacheApp] = []
    logged_to: list[object] = []
    monkeypatch.setattr(RegcacheApp, "run", lambda self: built.append(self))
    # not the real one: it replaces the test process's root log handlers (force=True) for every later test
    monkeypatch.setattr(logs, "log_to_file", lambda path, *args, **kwargs: logged_to.append(path))
    run_app(home=home, listen="127.0.0.1:0")
    assert [path.name for path in logged_to] == [logs.LOG_FILE]
    assert [app.freeze_heap for app in built] == [True]
    assert built[0].proxy is not None and not built[0].proxy.running
