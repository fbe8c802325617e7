"""Add a custom upstream registry, or override the URL of a built-in one."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Select, Static

from regcache.proxy.core.models import AuthPolicy, Upstream

from ..backend import Backend
from ..widgets.form_row import FormRow
from ..widgets.text_input import TextInput
from .form import FormScreen


class UpstreamForm(FormScreen[Upstream | None]):
    FALLBACK_ERROR_FIELD = "login_server"

    def compose_form(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Add upstream registry", classes="title")
            yield Static("A built-in login server (docker.io, ghcr.io, ...) gets its URL overridden.",
                         classes="detail")
            yield FormRow("Login server", TextInput(placeholder="HOST[:PORT], e.g. harbor.example.com",
                                                id="login-server", compact=True))
            yield Static(id="login_server-error", classes="error")
            yield FormRow("API base URL", TextInput(placeholder="https:// unless http:// is written out",
                                                id="url", compact=True))
            yield Static(id="url-error", classes="error")
            yield FormRow("Pulls allowed", Select([(p.description, p.value) for p in AuthPolicy],
                                                  value=AuthPolicy.BOTH.value, allow_blank=False, id="auth",
                                                  compact=True))
            yield Static(id="auth-error", classes="error")
            yield FormRow("Allowed origins", TextInput(placeholder="scheme://host:port ... (token service, CDN)",
                                                       id="allow-origins", compact=True))
            yield Static(id="allow_origin-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Add (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#login-server").focus()

    def action_save(self) -> None:
        self.clear_errors()
        server = self.query_one("#login-server", Input).value
        url = self.query_one("#url", Input).value
        auth = str(self.query_one("#auth", Select).value)
        # origins besides the URL's own that redirects and the token service may use on a private address
        origins = self.query_one("#allow-origins", Input).value.replace(",", " ").split()

        def save(backend: Backend) -> Upstream:
            from regcache.proxy.core.catalogue import BUILTIN_UPSTREAMS

            builtin = server.strip().lower() in BUILTIN_UPSTREAMS
            return backend.control.add_upstream(server, url, None if builtin else auth, origins)

        self.submit(save)
