"""Hostile data on every blade and screen (issue 13): markup and escape sequences are shown as text.

A state database is seeded through the engine with what clients and upstreams may send or an operator may
store: markup (``a[/b]c`` raised MarkupError and ended the app, ``[@click=app.quit]`` is a live action,
unbalanced ``[``), escape sequences (OSC 52 writes the clipboard, ``ESC[2J`` clears the screen), BEL, CR and
a bidi override. Every blade and every screen (details, forms with the engine's errors quoting what was
typed, dialogs, confirmations) is opened with the pilot: the app keeps running, the data is on the screen
as it was written, and no control character reaches the terminal.

A blade or screen module added without a case here fails ``test_every_blade_and_screen_has_a_case``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, Input, Select

import regcache.tui.blades
import regcache.tui.screens
from regcache.proxy.core.models import ANONYMOUS, PullEvent, Result
from regcache.proxy.core.tokens import ClientToken
from regcache.proxy.pull.events import event_row
from regcache.tui.backend import Backend, ProxyStatus
from regcache.tui.blades.activity import ActivityBlade
from regcache.tui.blades.base import Blade
from regcache.tui.blades.credentials import CredentialsBlade
from regcache.tui.blades.overview import OverviewBlade
from regcache.tui.blades.rules import RulesBlade
from regcache.tui.blades.tokens import TokensBlade
from regcache.tui.blades.upstreams import UpstreamsBlade
from regcache.tui.screens.config_files import ClientConfigScreen, RulesFileScreen
from regcache.tui.screens.confirm import ConfirmScreen
from regcache.tui.screens.credential_edit import CredentialEditForm
from regcache.tui.screens.credential_form import CredentialForm
from regcache.tui.screens.event_details import EventDetailsScreen
from regcache.tui.screens.help import HelpScreen
from regcache.tui.screens.image_action import ImageActionScreen
from regcache.tui.screens.rule_credentials import RuleCredentialsForm
from regcache.tui.screens.rule_details import RuleDetailsScreen
from regcache.tui.screens.rule_form import RuleForm
from regcache.tui.screens.rule_settings import RuleSettingsForm
from regcache.tui.screens.token_form import TokenForm, TokenPasswordScreen
from regcache.tui.screens.unlock import UnlockScreen
from regcache.tui.screens.upstream_form import UpstreamForm
from tests.helpers.pilot import screen_lines, wait_for

from .conftest import T0, make_app

pytestmark = pytest.mark.anyio

OSC52 = "\x1b]52;c;ZXZpbA==\x07"  # "put 'evil' on the clipboard"
CLEAR = "\x1b[2J"
BIDI = "\u202e"  # right-to-left override: "txt.exe" shows as "exe.txt"
#: what must never reach the terminal: C0 (but the compositor's own nothing), DEL, C1, bidi controls
FORBIDDEN = {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x202A, 0x202B, 0x202C, 0x202D, 0x202E,
                              0x2066, 0x2067, 0x2068, 0x2069, 0x200E, 0x200F, 0x2028, 0x2029)}

IPV6 = "[::1]:5443"  # a valid login server that is also a markup tag
USERNAME_ID = "keyring://svc/[@click=app.quit]a[/b]c"
PASSWORD_ID = f"keyring://svc/{OSC52}{BIDI}txt.exe"
SYNC_TAGS = "regex:^(v|[/]release)[@click=app.quit]\x1b\\[2J"
CLIENT = f"a[/b]c{OSC52}"
REFERENCE = f"[bold]v1{CLEAR}"
DETAIL = f"upstream said [@click=app.quit] [link=https://evil.example]x\x07\r{BIDI}unbalanced ["
TAG = f"[b]tag{CLEAR}"
USER_AGENT = f"evil/1.0 [@click=app.quit]{OSC52}{BIDI}"
SHOWN_OSC52 = "\\x1b]52;c;ZXZpbA==\\x07"
TOKEN = f"a[/b]c{CLEAR}tok"  # a client token stored before names were checked
TOKEN_REPOSITORY = f"[@click=app.quit]{BIDI}/*"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def seed(backend: Backend) -> None:
    """Hostile values wherever the engine takes them, and where it no longer does (configuration stored before
    its checks refused control characters, or written into the database by hand) straight into the rows."""
    control = backend.control
    store = control.store
    control.add_upstream(IPV6, f"http://{IPV6}", "both")
    control.create_credential_set("evil-creds", IPV6, "keyring://svc/user", "keyring://svc/password")
    control.create_rule("evil-rule", f"{IPV6}/evil/app", "app", "evil-creds", sync_tags="regex:^v")
    with store.conn:
        store.conn.execute("UPDATE credential_sets SET username_secret_id = ?, password_secret_id = ? WHERE name = ?",
                           [USERNAME_ID, PASSWORD_ID, "evil-creds"])
        store.conn.execute("UPDATE cache_rules SET sync_tags = ? WHERE name = ?", [SYNC_TAGS, "evil-rule"])
    store.record_rate_limit(IPV6, "evil-creds", "[link=https://evil.example]100", f"[@click=app.quit]7{CLEAR}", 1)
    store.record_rate_limit(IPV6, ANONYMOUS, "a[/b]c", f"9{CLEAR}{BIDI}", 0)
    store.record_repository("app", "evil-rule", f"{IPV6}/evil/app", T0)
    store.set_tag("app", f"anonymous/{IPV6}/evil/app", TAG, "sha256:" + "c" * 64, T0)
    store.record_tag_sync("evil-rule", "app", "failed", 0, DETAIL)
    store.insert_client_token(ClientToken(TOKEN, (TOKEN_REPOSITORY,), "scrypt$1$1$1$AA==$AA==", T0))
    store.insert_events([event_row(PullEvent(CLIENT, "GET", "manifest", "app", REFERENCE, Result.ERROR, 502,
                                             "evil-rule", 0, 12.0, DETAIL, T0, USER_AGENT))])


@dataclass(frozen=True)
class Case:
    """How to bring a blade or screen up, and what of the hostile data it must then show as written."""

    open: Callable[[object], Awaitable[None]]
    shows: tuple[str, ...]


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def blade(pilot, key: str) -> None:
    await pilot.press(key)
    await settle(pilot)


async def evil_rule_selected(pilot) -> None:
    await blade(pilot, "2")
    table = pilot.app.query_one("#rules-table", DataTable)
    table.move_cursor(row=table.get_row_index("evil-rule"))
    await pilot.pause()


async def save_with(pilot, values: dict[str, str], key: str = "ctrl+s") -> None:
    """Put ``values`` into the open form's inputs (as pasted: control characters cannot be typed) and save."""
    for selector, value in values.items():
        field = pilot.app.screen.query_one(selector, Input)
        field.value = value
        field.focus()
    await pilot.pause()
    await pilot.press(key)
    await settle(pilot)


async def open_rule_form(pilot) -> None:
    await blade(pilot, "2")
    await pilot.press("n")
    await settle(pilot)
    pilot.app.screen.query_one("#login-server", Select).value = IPV6  # its credentials are optional
    await save_with(pilot, {"#name": f"a[/b]c{CLEAR}"})


async def open_details(pilot) -> None:
    await evil_rule_selected(pilot)
    await pilot.press("enter")
    await settle(pilot)


async def open_rule_credentials(pilot) -> None:
    await evil_rule_selected(pilot)
    await pilot.press("e")
    await settle(pilot)


async def open_rule_settings(pilot) -> None:
    await evil_rule_selected(pilot)
    await pilot.press("s")
    await settle(pilot)
    await save_with(pilot, {"#retention": f"[bold]{CLEAR}"})


async def open_warm(pilot) -> None:
    await evil_rule_selected(pilot)
    await pilot.press("w")
    await settle(pilot)
    await save_with(pilot, {"#image": f"a[/b]c:[@click=app.quit]{CLEAR}"})
    await wait_for(pilot, lambda: "working" not in "".join(screen_lines(pilot.app)))


class HostileKeyring:
    """A keyring backend needing a password whose file path (from XDG_DATA_HOME) carries markup and escapes."""

    file_path = f"/home/a[/b]c{CLEAR}{BIDI}/crypted_pass.cfg"

    def _unlock(self) -> None:  # pragma: no cover - regcache never lets a backend prompt
        raise AssertionError("prompted")

    def get_password(self, service: str, name: str) -> str | None:
        return None  # every password is wrong: the error quoting the path shows too


async def open_unlock(pilot) -> None:
    from regcache.proxy.secrets import KeyringLock

    pilot.app.push_screen(UnlockScreen(KeyringLock([HostileKeyring()])))
    await settle(pilot)
    pilot.app.screen.query_one("#unlock-password", Input).value = "guess"
    await pilot.press("enter")
    await settle(pilot)


async def open_event_details(pilot) -> None:
    await blade(pilot, "4")
    pilot.app.query_one("#activity-table", DataTable).focus()
    await pilot.press("enter")
    await settle(pilot)


async def open_help(pilot) -> None:
    await open_event_details(pilot)
    await pilot.press("f1")
    await settle(pilot)


async def open_confirm(pilot) -> None:
    await blade(pilot, "5")
    table = pilot.app.query_one("#upstreams-table", DataTable)
    table.move_cursor(row=table.get_row_index(IPV6))
    await pilot.pause()
    await pilot.press("x")
    await settle(pilot)


async def open_credential_form(pilot) -> None:
    await blade(pilot, "3")
    await pilot.press("n")
    await settle(pilot)
    await pilot.click("#cred-uris")
    await save_with(pilot, {"#cred-name": "[@click=app.quit]", "#cred-username": "env://U",
                            "#cred-password": "env://P"})


async def open_upstream_form(pilot) -> None:
    await blade(pilot, "5")
    await pilot.press("a")
    await settle(pilot)
    await save_with(pilot, {"#login-server": f"a[/b]c{CLEAR}", "#url": "http://example.test"})


async def open_client_config(pilot) -> None:
    pilot.app.show_client_config()  # with the proxy's address, which holds a bidi override here
    await settle(pilot)
    assert pilot.app.screen.query_one("#address", Input).value == "127.0.0.1:5000\\u202e"  # not rewritten
    await save_with(pilot, {"#address": f"a[/b]c:5000{BIDI}"}, key="enter")


async def open_rules_file(pilot) -> None:
    """Plan a rules file whose rule name is markup and an escape sequence (YAML's \\e is ESC)."""
    path = pilot.app.backend.home.parent / "rules.yaml"
    path.write_text(f'rules:\n  - name: "a[/b]c\\e[2J"\n    source: "{IPV6}/x"\n    target: "x"\n')
    pilot.app.push_screen(RulesFileScreen())
    await settle(pilot)
    pilot.app.screen.query_one("#path", Input).value = str(path)
    await pilot.click("#plan")
    await settle(pilot)


async def open_credential_edit(pilot) -> None:
    await blade(pilot, "3")
    table = pilot.app.query_one("#credentials-table", DataTable)
    table.move_cursor(row=table.get_row_index("evil-creds"))
    table.focus()
    await pilot.press("enter")
    await settle(pilot)


async def open_token_form(pilot) -> None:
    await blade(pilot, "6")
    await pilot.press("n")
    await settle(pilot)
    await save_with(pilot, {"#name": f"a[/b]c{CLEAR}", "#repositories": "team/*"})


async def open_token_password(pilot) -> None:
    """The once-shown password of a token whose name (stored before the checks) and password are hostile."""
    await blade(pilot, "6")
    token = ClientToken(TOKEN, (TOKEN_REPOSITORY,), "x", T0)
    pilot.app.push_screen(TokenPasswordScreen(token, f"pw[/b]{OSC52}", f"127.0.0.1:5000{BIDI}"))
    await settle(pilot)


CASES: dict[type, Case] = {
    OverviewBlade: Case(lambda p: blade(p, "1"), ("[bold]v1\\x1b[2J", "[@click=app.quit]", "bind a[/b]c")),
    RulesBlade: Case(lambda p: blade(p, "2"), (f"{IPV6}/evil/app", "evil-creds")),
    # the budget is the last column: beyond the pane here, it is read in the details (CredentialEditForm)
    CredentialsBlade: Case(lambda p: blade(p, "3"), (USERNAME_ID, SHOWN_OSC52 + "\\u202etxt.exe")),
    ActivityBlade: Case(lambda p: blade(p, "4"), ("evil a[/b]c" + SHOWN_OSC52, "[bold]v1\\x1b[2J",
                                                  "upstream said [@click=app.quit] [link=https://evil.example]x")),
    EventDetailsScreen: Case(open_event_details, (
        "[link=https://evil.example]x\\x07\\x0d\\u202eunbalanced [", f"evil/1.0 [@click=app.quit]{SHOWN_OSC52}\\u202e",
        "[bold]v1\\x1b[2J", "a[/b]c" + SHOWN_OSC52)),
    HelpScreen: Case(open_help, ("Keys: error app", "Close")),
    UpstreamsBlade: Case(lambda p: blade(p, "5"), (IPV6, f"http://{IPV6}", "9\\x1b[2J\\u202e/a[/b]c")),
    RuleDetailsScreen: Case(open_details, ("regex:^(v|[/]release)[@click=app.quit]\\x1b\\[2J",
                                           "[b]tag\\x1b[2J", "[link=https://evil.example]x\\x07\\x0d\\u202eunbalanced")),
    # what was pasted into a field holds no control character: ESC became U+FFFD
    RuleForm: Case(open_rule_form, ("a[/b]c\ufffd[2J", "'a[/b]c\ufffd[2J'")),
    RuleCredentialsForm: Case(open_rule_credentials, (f"app => {IPV6}/evil/app",)),
    RuleSettingsForm: Case(open_rule_settings, ("regex:^(v|[/]release)", f"{IPV6}/evil/app", "[bold]")),
    ImageActionScreen: Case(open_warm, ("a[/b]c",)),
    ConfirmScreen: Case(open_confirm, (f"Remove upstream {IPV6}?",)),
    UnlockScreen: Case(open_unlock, ("/home/a[/b]c\\x1b[2J\\u202e/crypted_pass.cfg", "wrong password")),
    CredentialForm: Case(open_credential_form, (IPV6, "'[@click=app.quit]'")),
    UpstreamForm: Case(open_upstream_form, ("'a[/b]c\ufffd[2j'",)),
    ClientConfigScreen: Case(open_client_config, ("address 'a[/b]c:5000\ufffd' must be HOST:PORT",)),
    RulesFileScreen: Case(open_rules_file, ("a[/b]c",)),
    TokensBlade: Case(lambda p: blade(p, "6"), ("a[/b]c\\x1b[2Jtok", "[@click=app.quit]\\u202e/*")),
    TokenForm: Case(open_token_form, ("'a[/b]c\ufffd[2J'",)),
    TokenPasswordScreen: Case(open_token_password, ("Token a[/b]c\\x1b[2Jtok created", "pw[/b]" + SHOWN_OSC52,
                                                    "docker login 127.0.0.1:5000\\u202e -u a[/b]c\\x1b[2Jtok")),
    CredentialEditForm: Case(open_credential_edit, (USERNAME_ID, "keyring://svc/" + SHOWN_OSC52 + "\\u202etxt.exe",
                                                    "Used by       evil-rule",
                                                    "[@click=app.quit]7\\x1b[2J/[link=https://evil.example]100")),
}


def _defined_in(package) -> list[type]:
    """The blades and screens the package's modules define (not the bases others derive from)."""
    found: list[type] = []
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if cls.__module__ == module.__name__ and issubclass(cls, (Blade, Screen))]
    return [cls for cls in found if not any(other is not cls and issubclass(other, cls) for other in found)]


def test_every_blade_and_screen_has_a_case():
    defined = set(_defined_in(regcache.tui.blades)) | set(_defined_in(regcache.tui.screens))
    assert len(defined) >= 15
    assert sorted(c.__name__ for c in defined - set(CASES)) == []
    assert sorted(c.__name__ for c in set(CASES) - defined) == []


@pytest.mark.parametrize("shown", list(CASES), ids=lambda c: c.__name__)
async def test_hostile_data_is_shown_as_text(backend, shown):
    seed(backend)
    status = ProxyStatus(f"127.0.0.1:5000{BIDI}", "stopped", f"bind a[/b]c{CLEAR} failed")
    app = make_app(backend, status)
    async with app.run_test(size=(240, 60)) as pilot:
        await settle(pilot)
        await CASES[shown].open(pilot)
        if issubclass(shown, Blade):
            assert app.query_one(ContentSwitcher).current == app.query_one(shown).id
        else:
            assert isinstance(app.screen, shown)
        for _ in range(100):  # a table sizes its columns to its rows on a later refresh
            lines = screen_lines(app)
            shown_text = "\n".join(lines)
            if all(expected in shown_text for expected in CASES[shown].shows):
                break
            await pilot.pause(0.05)
        assert app.is_running and app.return_code is None
        for expected in CASES[shown].shows:
            assert expected in shown_text, f"{expected!r} is not on the screen:\n{shown_text}"
        raw = sorted({f"U+{ord(ch):04X}" for line in lines for ch in line if ch in FORBIDDEN})
        assert raw == [], f"control characters reached the screen: {raw}"
