"""Issue 15's screens driven by Textual's Pilot: state without colour, the Cache rules blade at 80 columns with
search, Credentials with used-by, details and edit, the Tokens blade, forms, refusals, and purge."""

from __future__ import annotations

import pytest
from textual.widgets import ContentSwitcher, DataTable, Input, TextArea

from regcache.proxy.core.models import CacheRule
from regcache.proxy.core.rules import MAX_RULES
from regcache.proxy.core.tokens import verify_password
from regcache.tui.screens.confirm import ConfirmScreen
from regcache.tui.screens.credential_edit import CredentialEditForm
from regcache.tui.screens.credential_form import CredentialForm
from regcache.tui.screens.rule_details import RuleDetailsScreen
from regcache.tui.screens.rule_form import RuleForm
from regcache.tui.screens.rule_settings import RuleSettingsForm
from regcache.tui.screens.token_form import TokenForm, TokenPasswordScreen
from tests.helpers.pilot import screen_lines, table_keys, type_into, wait_for
from tests.helpers.state import cached_tags

from .conftest import T0, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def shown(app) -> str:
    return "\n".join(screen_lines(app))


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def on_rules(pilot, rows: list[str] | None = None) -> None:
    await pilot.press("2")
    if rows is not None:
        await wait_for(pilot, lambda: table_keys(pilot.app, "#rules-table") == rows)
    await settle(pilot)


# -- state without colour --------------------------------------------------------------------------

async def test_checkbox_and_radio_states_read_without_colour(filled_backend):
    filled_backend.control.update_rule("ubuntu", serve_stale_if_deleted=False, serve_stale_on_error=True)
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await on_rules(pilot, ["ubuntu", "all-mcr", "team-ghcr"])
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleSettingsForm))
        await settle(pilot)
        text = shown(app)
        assert "[x] Serve cached tags while the upstream fails" in text
        assert "[ ] Serve cached tags the upstream deleted" in text
        await pilot.click("#deleted")
        await settle(pilot)
        assert "[x] Serve cached tags the upstream deleted" in shown(app)
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleForm))
        await settle(pilot)
        text = shown(app)
        assert "(•) Select credentials" in text and "( ) Create new credentials" in text
        await pilot.click("#create-creds")
        await settle(pilot)
        text = shown(app)
        assert "( ) Select credentials" in text and "(•) Create new credentials" in text
        app.screen.query_one("#cred-mode").scroll_visible(animate=False)  # the form scrolls within 24 rows
        await settle(pilot)
        text = shown(app)
        assert "(•) Store in the keyring" in text and "( ) Enter secret URIs" in text


# -- the Cache rules blade ---------------------------------------------------------------------------

async def test_rules_fit_name_target_source_credentials_and_date_at_80_columns(filled_backend):
    filled_backend.control.create_rule("long-source", "mcr.microsoft.com/dotnet/sdk/very/deep/path/to/image",
                                       "dotnet/sdk")
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await on_rules(pilot, ["ubuntu", "all-mcr", "team-ghcr", "long-source"])
        lines = screen_lines(app)
        header = next(line for line in lines if " Name " in line)
        for column in ("Name", "Target", "Source", "Creds", "Created"):
            assert column in header, header
        ubuntu = next(line for line in lines if "ubuntu" in line and "hub-creds" in line)
        assert "2026-03-14" in ubuntu and "docke…buntu" in ubuntu and "hub-creds ✓" in ubuntu
        long = next(line for line in lines if "long-source" in line)
        # cut in the middle: the registry and the image's last part stay
        assert "mcr." in long and "…" in long and "image" in long, long
        assert "2026-" in long or "20" in long.split()[-1]
        assert all(len(line) <= 80 for line in lines)


async def test_search_filters_rows_and_typing_never_switches_blades(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await on_rules(pilot, ["ubuntu", "all-mcr", "team-ghcr"])
        await pilot.press("slash")
        await pilot.pause()
        assert isinstance(app.focused, Input) and app.focused.id == "rules-search"
        await pilot.press(*"app500")  # digits are blade keys everywhere but in a text field
        await pilot.pause()
        assert app.query_one(ContentSwitcher).current == "rules"
        assert app.query_one("#rules-search", Input).value == "app500"
        assert table_keys(app, "#rules-table") == []
        assert "0 of 3 rules match the search" in shown(app)
        app.query_one("#rules-search", Input).value = ""
        await pilot.press(*"ghcr")
        await wait_for(pilot, lambda: table_keys(app, "#rules-table") == ["team-ghcr"])
        await pilot.press("enter")  # to the list
        assert isinstance(app.focused, DataTable)
        await pilot.press("escape")  # clears the search
        await wait_for(pilot, lambda: table_keys(app, "#rules-table") == ["ubuntu", "all-mcr", "team-ghcr"])
        assert not app.query_one("#rules-search", Input).display


async def test_home_end_g_and_G_move_to_the_first_and_last_row(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await on_rules(pilot, ["ubuntu", "all-mcr", "team-ghcr"])
        table = app.query_one("#rules-table", DataTable)
        table.focus()
        for last, first in (("end", "home"), ("G", "g")):
            await pilot.press(last)
            assert table.cursor_row == 2 and table.cursor_column == 0
            await pilot.press(first)
            assert table.cursor_row == 0 and table.cursor_column == 0


async def test_the_rule_limit_is_said_before_the_form_opens(backend):
    store = backend.control.store
    with store.transaction():
        for i in range(MAX_RULES):
            store.insert_cache_rule(CacheRule(f"rule-{i:04d}", f"ghcr.io/acme/app{i}", f"app{i}", None, T0))
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await on_rules(pilot)
        await pilot.press("n")
        await settle(pilot)
        assert not isinstance(app.screen, RuleForm)
        assert any("limit of 1,000 is reached" in n.message for n in app._notifications)


# -- Credentials -------------------------------------------------------------------------------------

async def test_credentials_show_used_by_date_and_the_error_message(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: table_keys(app, "#credentials-table") == ["hub-creds", "ghcr-creds"])
        await settle(pilot)
        lines = screen_lines(app)
        ghcr = next(line for line in lines if "ghcr-creds" in line)
        assert "team-ghcr" in ghcr and "2026-03-14" in ghcr
        assert "upstream ghcr.io: refused" in ghcr  # the message, not only UpstreamAuthFailed
        hub = next(line for line in lines if "hub-creds" in line)
        assert "ubuntu" in hub


async def test_enter_shows_details_and_edits_the_secret_ids(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: table_keys(app, "#credentials-table") == ["hub-creds", "ghcr-creds"])
        app.query_one("#credentials-table", DataTable).focus()
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CredentialEditForm))
        await settle(pilot)
        text = shown(app)
        assert "Used by       team-ghcr" in text and "UpstreamAuthFailed" in text
        assert "refused the credentials" in text and "Created       2026-03-14" in text
        assert app.focused is app.screen.query_one("#username-id", Input)  # the first field
        field = app.screen.query_one("#password-id", Input)
        assert not field.password and field.value == "env://GH_TOKEN"  # an id, not a secret
        field.value = "not a uri"
        await pilot.press("ctrl+s")
        error = app.screen.query_one("#password_secret_id-error")
        await wait_for(pilot, lambda: error.display)
        assert isinstance(app.screen, CredentialEditForm)
        field.value = "env://GH_PAT"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, CredentialEditForm))
    assert filled_backend.control.get_credential_set("ghcr-creds").password_secret_id == "env://GH_PAT"
    assert filled_backend.control.get_credential_set("ghcr-creds").username_secret_id == "env://GH_USER"


async def test_recheck_logs_in_to_the_upstream_for_real(filled_backend, basic_auth_registry):
    """`r` logs in with the set (a real registry with Basic auth) and shows what the upstream said; a set whose
    upstream cannot be reached is not marked either way, and the notification says why."""
    user, password = basic_auth_registry.credentials
    control = filled_backend.control
    control.add_upstream(basic_auth_registry.host, basic_auth_registry.url, "credentials")
    control.set_secret("keyring://regcache-tests/tui-user", user)
    control.set_secret("keyring://regcache-tests/tui-pass", password)
    control.create_credential_set("real-creds", basic_auth_registry.host, "keyring://regcache-tests/tui-user",
                                  "keyring://regcache-tests/tui-pass")
    app = make_app(filled_backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: "real-creds" in table_keys(app, "#credentials-table"))
        table = app.query_one("#credentials-table", DataTable)
        table.focus()
        table.move_cursor(row=table.get_row_index("real-creds"))
        assert control.get_credential_set("real-creds").health.status.value == "Unknown"
        await pilot.press("r")
        await wait_for(pilot, lambda: control.get_credential_set("real-creds").health.status.value == "Healthy")
        await settle(pilot)
        assert any("Credentials real-creds: Healthy" in n.message for n in app._notifications)

        table.move_cursor(row=table.get_row_index("ghcr-creds"))  # ghcr.io: unreachable from here
        before = control.get_credential_set("ghcr-creds").health
        await pilot.press("r")
        await wait_for(pilot, lambda: any("ghcr-creds" in n.message and "not checked now" in n.message
                                          for n in app._notifications), timeout=60)
        assert control.get_credential_set("ghcr-creds").health == before


async def test_deleting_a_set_in_use_is_refused_before_asking(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: table_keys(app, "#credentials-table") == ["hub-creds", "ghcr-creds"])
        app.query_one("#credentials-table", DataTable).focus()
        await pilot.press("d")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("used by cache rule(s) ubuntu" in n.message for n in app._notifications)
    assert filled_backend.control.get_credential_set("hub-creds")


async def test_the_credentials_form_starts_on_its_first_field_and_shows_errors_beside_them(backend):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, CredentialForm))
        await settle(pilot)
        assert app.focused is app.screen.query_one("#login-server")
        assert not app.screen.query_one("#cred-username", Input).password  # a user name is shown as typed
        assert app.screen.query_one("#cred-password", Input).password
        await type_into(pilot, "#cred-username", "octocat")
        assert "octocat" in shown(app)
        await pilot.press("ctrl+s")  # no name
        name_error = app.screen.query_one("#cred-name-error")
        await wait_for(pilot, lambda: name_error.display)
        # right below the name's field, not under the password
        lines = screen_lines(app)
        name_row = next(i for i, line in enumerate(lines) if "Credentials name" in line)
        assert "must be 5 to 50 characters" in lines[name_row + 1]
        assert all(len(line) <= 80 for line in lines) and len(lines) == 24
        dialog = app.screen.query_one(".dialog")
        assert dialog.region.bottom <= 23  # above the footer


# -- Tokens ------------------------------------------------------------------------------------------

async def test_create_a_token_see_its_password_once_and_delete_it(backend):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "Client login  off: no client tokens" in shown(app)
        await pilot.press("6")
        await settle(pilot)
        assert "No client tokens" in shown(app)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, TokenForm))
        assert app.focused is app.screen.query_one("#name")
        await type_into(pilot, "#name", "ci-pull")
        await type_into(pilot, "#repositories", "team/* ubuntu")
        await type_into(pilot, "#expiry", "30d")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, TokenPasswordScreen))
        await settle(pilot)
        password = app.screen.query_one("#password", TextArea).selected_text
        token = backend.control.get_token("ci-pull")
        assert verify_password(password, token.password_hash)  # what is shown is the token's password
        assert password in shown(app)
        assert token.repositories == ("team/*", "ubuntu") and token.expires_at is not None
        await pilot.press("escape")
        await wait_for(pilot, lambda: table_keys(app, "#tokens-table") == ["ci-pull"])
        await settle(pilot)
        text = shown(app)
        assert password not in text and "team/* ubuntu" in text and "never" in text  # never used yet
        await pilot.press("1")
        await wait_for(pilot, lambda: "Client login  on: 1 client token" in shown(app))

        await pilot.press("6")
        await settle(pilot)
        app.query_one("#tokens-table", DataTable).focus()
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "It is the last token" in str(app.screen.query_one(".detail").render())
        await pilot.press("y")
        await wait_for(pilot, lambda: table_keys(app, "#tokens-table") == [])
    assert backend.control.list_tokens() == []


async def test_a_refused_token_shows_the_error_beside_its_field(backend):
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("6")
        await settle(pilot)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, TokenForm))
        await type_into(pilot, "#name", "ci-pull")
        await type_into(pilot, "#repositories", "team/*")
        await type_into(pilot, "#expiry", "yesterday")
        await pilot.press("ctrl+s")
        error = app.screen.query_one("#expiry-error")
        await wait_for(pilot, lambda: error.display)
        assert "expiry 'yesterday' must be an ISO date" in str(error.render())
    assert backend.control.list_tokens() == []


# -- purge from the rule details ---------------------------------------------------------------------

async def test_rule_details_list_tag_digests_and_purge_a_tag(filled_backend):
    store = filled_backend.control.store
    hub = "credential-set/hub-creds@0123456789abcdef/docker.io/library/ubuntu"
    store.set_tag("ubuntu", hub, "24.04", "sha256:" + "d" * 64, T0)
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await on_rules(pilot, ["ubuntu", "all-mcr", "team-ghcr"])
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleDetailsScreen))
        await wait_for(pilot, lambda: app.screen.query_one("#tags", DataTable).row_count == 2)
        await settle(pilot)
        text = shown(app)
        assert "22.04  sha256:" + "b" * 20 in text and "24.04  sha256:" + "d" * 20 in text
        app.screen.query_one("#tags", DataTable).focus()
        await pilot.press("down", "p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Purge ubuntu:24.04?" in shown(app)
        await pilot.press("n")
        await pilot.pause()
        assert cached_tags(store, "ubuntu") == ["22.04", "24.04"]
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: cached_tags(store, "ubuntu") == ["22.04"])
        await wait_for(pilot, lambda: isinstance(app.screen, RuleDetailsScreen)
                       and app.screen.query_one("#tags", DataTable).row_count == 1)
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Purge the cached repository ubuntu?" in shown(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: not store.is_cached_repository("ubuntu"))
        await wait_for(pilot, lambda: any("Purged ubuntu" in n.message for n in app._notifications))




# -- reloading -------------------------------------------------------------------------------------

async def test_a_change_made_elsewhere_appears_on_the_next_refresh_and_the_same_rows_are_not_redrawn(
        filled_backend, monkeypatch):
    from regcache.tui.blades.base import Blade

    monkeypatch.setattr(Blade, "REFRESH_SECONDS", 0.2)
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await on_rules(pilot, ["ubuntu", "all-mcr", "team-ghcr"])
        table = app.query_one("#rules-table", DataTable)
        rebuilt = 0
        clear = table.clear

        def counting_clear(*args, **kwargs):
            nonlocal rebuilt
            rebuilt += 1
            return clear(*args, **kwargs)

        monkeypatch.setattr(table, "clear", counting_clear)
        await pilot.pause(1.0)  # several refreshes that read the same rules
        assert rebuilt == 0
        # another process (the CLI) adds a rule: the blade shows it without a key press
        filled_backend.control.create_rule("from-cli", "quay.io/org/tool", "tool")
        await wait_for(pilot, lambda: "from-cli" in table_keys(app, "#rules-table"), timeout=5)
        assert rebuilt == 1

