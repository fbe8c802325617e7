"""Upstreams: built-in and custom registries; add a custom one or override a built-in URL."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from regcache.proxy.core.models import ANONYMOUS, Upstream

from .. import format as fmt
from ..screens.upstream_form import UpstreamForm
from ..text import text
from ..widgets.row_table import RowTable
from .base import Blade


def kind(upstream: Upstream) -> str:
    if not upstream.builtin:
        return "custom"
    return "built-in, URL overridden" if upstream.overridden else "built-in"


class UpstreamsBlade(Blade):
    CHANGES = "upstreams"
    #: the upstreams shown, by login server
    upstreams: dict[str, Upstream] = {}
    BINDINGS = [
        Binding("a", "add_upstream", "Add", id="upstreams.add"),
        Binding("x", "remove_upstream", "Remove", id="upstreams.remove"),
    ]

    def compose(self) -> ComposeResult:
        yield Label("Upstreams", classes="blade-title")
        yield Static(text("Registries cache rules can pull from"), classes="summary")
        table = RowTable(id="upstreams-table")
        table.add_columns("Login server", "URL", "Pulls", "Anonymous budget", "Kind")
        yield table
        # no room for another column at 80x24: the highlighted upstream's allowed origins go below the table
        yield Static(id="upstream-origins", classes="summary")

    @work(thread=True, exclusive=True, group="upstreams-load")
    def load_in_thread(self) -> None:
        upstreams, budgets = self.backend.call(lambda b: (b.control.list_upstreams(), b.control.rate_limits()))
        self.deliver(self._show, upstreams, budgets)

    def _show(self, upstreams: list[Upstream], budgets: dict) -> None:
        self.upstreams = {u.login_server: u for u in upstreams}
        self.query_one(RowTable).show_rows([
            (u.login_server, (text(u.login_server), text(u.base_url), text(u.auth_policy.value),
                              text(fmt.budget(budgets.get((u.login_server, ANONYMOUS)))), text(kind(u))))
            for u in upstreams])
        self._show_origins()

    @on(DataTable.RowHighlighted)
    def _show_origins(self) -> None:
        """Which origins besides its own the highlighted upstream's redirects and token service may use."""
        upstream = self.upstreams.get(self.selected_key() or "")
        origins = ", ".join(upstream.allowed_origins) if upstream and upstream.allowed_origins else "none"
        shown = f"Allowed origins of {upstream.login_server}: {origins}" if upstream else ""
        self.query_one("#upstream-origins", Static).update(text(shown))

    def action_add_upstream(self) -> None:
        def added(upstream: Upstream | None) -> None:
            if upstream is not None:
                self.changed(f"Upstream {upstream.login_server}: {upstream.base_url}")

        self.app.push_screen(UpstreamForm(), added)

    def action_remove_upstream(self) -> None:
        server = self.selected_key()
        if server is not None:
            self.confirm_change(f"Remove upstream {server}?", "A built-in upstream gets its default URL back.",
                                lambda b: b.control.remove_upstream(server), f"Removed {server}")
