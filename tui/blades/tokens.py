"""Tokens: the client tokens (ACR's tokens and scope maps) that clients log in with; create, delete."""

from __future__ import annotations

from datetime import datetime

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Label, Static

from regcache.proxy.core.tokens import ClientToken

from .. import format as fmt
from ..screens.token_form import TokenForm, TokenPasswordScreen
from ..text import text
from ..widgets.row_table import RowTable
from .base import Blade


def _date(value: datetime | None, never: str = "-") -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else never


def client_login(tokens: int) -> str:
    """Whether clients must log in, as the Overview says it."""
    if tokens:
        return f"on: {fmt.count(tokens, 'client token')}, a pull without one gets 401"
    return "off: no client tokens, pulls are anonymous"


class TokensBlade(Blade):
    CHANGES = "tokens"
    BINDINGS = [
        Binding("n", "new_token", "Create", id="tokens.new"),
        Binding("d", "delete_token", "Delete", id="tokens.delete"),
    ]

    tokens: list[ClientToken] = []

    def compose(self) -> ComposeResult:
        yield Label("Tokens", classes="blade-title")
        yield Static("", id="tokens-summary", classes="summary")
        table = RowTable(id="tokens-table")
        table.add_columns("Name", "Repositories", "Expiry", "Last used", "Created", "Status")
        yield table

    @work(thread=True, exclusive=True, group="tokens-load")
    def load_in_thread(self) -> None:
        tokens = self.backend.call(lambda b: b.control.list_tokens())
        self.deliver(self._show, tokens)

    def _show(self, tokens: list[ClientToken]) -> None:
        self.tokens = tokens
        self.query_one(RowTable).show_rows([
            (t.name, (text(t.name), text(" ".join(t.repositories)), text(_date(t.expires_at, "never")),
                      text(_date(t.last_used, "never")), text(_date(t.created_at)),
                      text(t.status, "bold red" if t.expired() else "green")))
            for t in tokens])
        self.query_one("#tokens-summary", Static).update(text(
            f"{fmt.count(len(tokens), 'client token')} · clients must log in with one (401 without)"
            if tokens else
            "No client tokens: clients pull without logging in. n creates one; then every client must log in."))

    def action_new_token(self) -> None:
        def created(result: tuple[ClientToken, str] | None) -> None:
            if result is None:
                return
            token, password = result
            self.changed(f"Created token {token.name}: clients now log in")
            status = self.app.proxy_status  # type: ignore[attr-defined]
            address = status.address if status.address != "-" else "127.0.0.1:5000"
            self.app.push_screen(TokenPasswordScreen(token, password, address))

        self.app.push_screen(TokenForm(), created)

    def action_delete_token(self) -> None:
        name = self.selected_key()
        if name is None:
            return
        last = len(self.tokens) == 1
        detail = ("Clients using it are refused from their next request." +
                  (" It is the last token: pulls need no login afterwards." if last else ""))
        self.confirm_change(f"Delete token {name}?", detail, lambda b: b.control.delete_token(name),
                            f"Deleted token {name}")
