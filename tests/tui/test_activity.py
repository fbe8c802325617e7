"""The Activity blade (issue 15): rule column, reasons, details on Enter, exact filters, the client's tool;
overlapping loads never add an event twice. And the help screen (? and F1) with the palette's keys."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input, Static

from regcache.proxy.core.models import PullEvent, Result
from regcache.proxy.core.user_agents import client_tool
from regcache.proxy.pull.events import event_row
from regcache.proxy.state.statistics import RecordedEvent, Totals
from regcache.tui.blades.activity import ActivityBlade, ActivityFilter
from regcache.tui.screens.event_details import EventDetailsScreen
from regcache.tui.screens.help import HelpScreen
from regcache.tui.screens.rule_form import RuleForm
from tests.helpers.pilot import screen_lines, table_keys, wait_for

from .conftest import T0, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def recorded(n: int, repository: str, result: str, rule: str | None = "team-all", reference: str = "1.0",
             client: str = "10.0.0.1", user_agent: str | None = None, detail: str | None = None) -> RecordedEvent:
    return RecordedEvent(n, PullEvent(client, "GET", "manifest", repository, reference, Result(result), 200, rule,
                                      10, 1.0, detail, T0, user_agent))


# -- the client's tool ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("user_agent", "tool"), [
    ("docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.8.0 os/linux arch/amd64 "
     "UpstreamClient(Docker-Client/27.3.1 \\(linux\\))", "docker"),
    ("containerd/1.7.22", "containerd"),
    ("containerd/v2.0.0", "containerd"),
    ("podman/5.2.2", "podman"),
    ("skopeo/1.16.1", "skopeo"),
    ("containers/5.29.2 (github.com/containers/image)", "podman/skopeo"),
    ("crane/v0.20.2 go-containerregistry/v0.20.2", "crane"),
    ("go-containerregistry/v0.19.0", "go-containerregistry"),
    ("oras/1.2.0", "oras"),
    ("Helm/3.16.2", "helm"),
    ("buildkit/v0.16.0", "buildkit"),
    ("cri-o/1.31.0 go/go1.22.5 os/linux arch/amd64", "cri-o"),
    ("regclient/regctl (v0.7.1)", "regctl"),
    ("Go-http-client/1.1", "go"),
    ("curl/8.5.0", "curl"),
    ("mytool/0.1 extra", "mytool"),
    ("[@click=app.quit]", ""),
    ("", ""),
    (None, ""),
])
def test_the_client_tool_is_read_from_its_user_agent(user_agent, tool):
    assert client_tool(user_agent) == tool


# -- the filter ---------------------------------------------------------------------------------------------


def test_a_result_filter_is_exact_and_free_words_search_repository_reference_and_client():
    missing_hit = recorded(1, "team/missing", "hit")
    miss = recorded(2, "team/app", "miss", user_agent="podman/5.2.2")
    other_rule = recorded(3, "lib/x", "miss", rule="team-all-old", client="10.0.0.9")
    assert not ActivityFilter.parse("")
    only_misses = ActivityFilter.parse("result:miss")
    assert [e.id for e in (missing_hit, miss, other_rule) if only_misses.matches(e)] == [2, 3]
    # "miss" alone is the result, not also team/missing; "missing" is a word
    assert not ActivityFilter.parse("miss").matches(missing_hit) and ActivityFilter.parse("miss").matches(miss)
    assert ActivityFilter.parse("missing").matches(missing_hit)
    rule = ActivityFilter.parse("rule:team-all result:miss")
    assert [e.id for e in (missing_hit, miss, other_rule) if rule.matches(e)] == [2]
    assert ActivityFilter.parse("RESULT:hit,miss").matches(missing_hit)  # any of the values, any case
    assert ActivityFilter.parse("tool:podman").matches(miss) and not ActivityFilter.parse("tool:podman").matches(
        other_rule)
    assert ActivityFilter.parse("10.0.0.9").matches(other_rule)  # the client's address
    assert ActivityFilter.parse("podman app").matches(miss)  # every word, each in some field
    assert not ActivityFilter.parse("podman lib").matches(miss)
    digest = recorded(4, "lib/x", "hit", reference="sha256:abcdef")
    assert ActivityFilter.parse("sha256:abc").matches(digest)  # not a key: a word
    assert ActivityFilter.parse('"lib/x" result:hit').matches(digest)
    assert ActivityFilter.parse('"open quote').words == ('"open', "quote")


# -- the blade ---------------------------------------------------------------------------------------------


async def show_activity(pilot) -> DataTable:
    await pilot.press("4")
    table = pilot.app.query_one("#activity-table", DataTable)
    await wait_for(pilot, lambda: table.row_count == 6)
    return table


async def test_rows_show_rule_reason_and_tool_and_enter_shows_every_field(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(120, 40)) as pilot:
        table = await show_activity(pilot)
        labels = [str(c.label) for c in table.columns.values()]
        assert labels == ["Time", "Result", "Image", "Reason", "Rule", "Client", "Size", "Took"]
        newest = [str(cell) for cell in table.get_row_at(0)]
        assert newest[1:6] == ["error 401", "team/web:2.0", "upstream ghcr.io: refused the credential…",
                               "team-ghcr", "podman 10.0.0.9"]
        assert [str(c) for c in table.get_row_at(5)][5] == "docker 10.0.0.7"
        assert [str(c) for c in table.get_row_at(2)][5] == "containerd 10.0.0.8"
        table.focus()
        await pilot.pause()
        # the whole reason of the row under the cursor, under the table
        assert "refused the credentials of credential set 'ghcr-creds'" in str(
            app.query_one("#activity-selected", Static).render())
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, EventDetailsScreen))
        shown = "\n".join(screen_lines(app))
        for line in ("Result      error (HTTP 401)", "Request     GET manifest", "Repository  team/web",
                     "Reference   2.0", "Rule        team-ghcr", "Client      10.0.0.9", "Tool        podman",
                     "User-Agent  podman/5.2.2", "Took        48 ms",
                     "Reason      upstream ghcr.io: refused the credentials of credential set 'ghcr-creds'"):
            assert line in shown, f"{line!r} not in\n{shown}"
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, EventDetailsScreen))


async def test_the_filter_takes_terms_and_words(filled_backend):
    store = filled_backend.control.store
    store.insert_events([event_row(PullEvent("10.0.0.5", "GET", "manifest", "team/missing", "1", Result.HIT, 200,
                                             "team-ghcr", 10, 1.0, None, T0))])
    app = make_app(filled_backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        table = app.query_one("#activity-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == 7)

        def results() -> list[str]:
            return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]

        await pilot.press("slash", *"result:miss")
        await wait_for(pilot, lambda: results() == ["miss", "miss"])
        app.query_one("#activity-filter", Input).value = "miss"  # the result, not team/missing
        await wait_for(pilot, lambda: results() == ["miss", "miss"])
        app.query_one("#activity-filter", Input).value = "missing"  # a word
        await wait_for(pilot, lambda: results() == ["hit"])
        app.query_one("#activity-filter", Input).value = "rule:team-ghcr tool:podman"
        await wait_for(pilot, lambda: results() == ["error 401", "stale"])
        await pilot.press("enter", "escape")
        await wait_for(pilot, lambda: table.row_count == 7)


async def test_overlapping_loads_never_add_an_event_twice(filled_backend):
    """The first load and the 1 s refresh may both read from id 0: the second is merged, not added again
    (it raised DuplicateKey and ended the app)."""
    app = make_app(filled_backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await show_activity(pilot)
        blade = app.query_one(ActivityBlade)
        everything = filled_backend.stats.latest_events(1000)
        totals = Totals(0, 0, 0, 0, 0, 0)
        blade._show(everything, totals)  # a late first load, after the refresh merged the same events
        blade._show(everything[2:], totals)
        for _ in range(5):  # reloads asked for while one runs: one more runs after it, none beside it
            blade.load()
            assert sum(w.group == "activity-load" and not w.is_finished for w in app.workers) <= 1
        await wait_for(pilot, lambda: all(w.is_finished for w in app.workers))
        await pilot.pause()
        assert table_keys(app, "#activity-table") == [str(e.id) for e in reversed(everything)]
        assert app.is_running


# -- help ------------------------------------------------------------------------------------------------


def help_text(app) -> str:
    return "\n".join(screen_lines(app))


async def test_help_lists_the_keys_of_the_blade_and_the_app_on_question_mark_and_f1(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_activity(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        sections = {s.title: dict((d, k) for k, d in s.keys) for s in app.screen.sections}
        assert sections["Activity blade"] == {"Filter": "/", "Details": "⏎", "Clear filter": "esc"}
        assert sections["Everywhere"]["Go to Overview"] == "1" and sections["Everywhere"]["Help"] == "? f1"
        assert sections["Everywhere"]["Quit"] == "^q q"
        assert "Cursor down" in sections["Tables"]
        assert "Keys: Activity" in help_text(app)
        await pilot.press("question_mark")  # closes it again
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))
        # in the filter field "?" is a character, F1 is help
        await pilot.press("slash", "question_mark")
        assert app.query_one("#activity-filter", Input).value == "?"
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "Text fields" in {s.title for s in app.screen.sections}
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_help_on_a_modal_form_lists_its_keys(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await pilot.pause()
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleForm))
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        sections = {s.title: dict((d, k) for k, d in s.keys) for s in app.screen.sections}
        assert sections["This screen"]["Save"] == "^s" and sections["This screen"]["Cancel"] == "esc"
        # only its priority keys reach through a modal: not "1".."5" nor q
        assert sections["Everywhere"] == {"Help": "? f1", "Quit": "^q", "palette": "^p"}
        assert app.screen.sections[0].title == "This screen"
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, RuleForm))


async def test_palette_entries_show_their_keys(filled_backend):
    app = make_app(filled_backend)
    async with app.run_test(size=(80, 24)):
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert commands["Warm an image (w)"].endswith("on Cache rules (key 2)")
        assert commands["Go to Credentials (3)"] == "Show the Credentials blade (key 3)"
        assert "Sync tags now" in commands  # no key of its own: the title as it was
