"""Operations settings of a cache rule: freshness, stale serving, retention, tag sync."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, Static

from regcache.proxy.core.models import CacheRule
from regcache.proxy.core.settings import parse_rule_settings
from regcache.proxy.core.units import format_duration

from ..backend import Backend
from ..text import printable, text
from ..widgets.form_row import FormRow
from ..widgets.text_input import TextInput
from ..widgets.toggles import StateCheckbox
from .form import FormScreen


class RuleSettingsForm(FormScreen[CacheRule | None]):
    """Edits the settings beyond ACR through the same engine checks as `regcache cache update`."""

    FALLBACK_ERROR_FIELD = "freshness"

    def __init__(self, rule: CacheRule) -> None:
        super().__init__()
        self._rule = rule

    def compose_form(self) -> ComposeResult:
        rule = self._rule
        with Vertical(classes="dialog"):
            yield Label(text(f"Settings of cache rule {rule.name}"), classes="title")
            yield Static(text(f"{rule.target_repository} => {rule.source_repository}"), classes="detail")
            yield FormRow("Freshness", TextInput(format_duration(rule.freshness or 0) or "0s", id="freshness",
                                             placeholder="serve a tag this long unchecked, e.g. 10m", compact=True))
            yield Static(id="freshness-error", classes="error")
            yield StateCheckbox("Serve cached tags while the upstream fails", rule.serve_stale_on_error, id="stale")
            yield StateCheckbox("Serve cached tags the upstream deleted", rule.serve_stale_if_deleted, id="deleted")
            yield FormRow("Retention", TextInput(format_duration(rule.retention) or "", id="retention",
                                             placeholder="evict when unpulled this long, e.g. 30d (empty: keep)",
                                             compact=True))
            yield Static(id="retention-error", classes="error")
            # a regex keeps its meaning with its control characters spelled out (\x1b matches ESC)
            yield FormRow("Sync tags", TextInput(printable(rule.sync_tags or "", limit=None), id="sync-tags",
                                             placeholder="semver:>=1.2,<2 or a regex (empty: off)", compact=True))
            yield Static(id="sync_tags-error", classes="error")
            yield FormRow("Sync every", TextInput(format_duration(rule.sync_interval) or "", id="sync-interval",
                                              placeholder="1h when empty", compact=True))
            yield Static(id="sync_interval-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#freshness").focus()

    def action_save(self) -> None:
        self.clear_errors()
        values = {key: self.query_one(f"#{key}", Input).value.strip()
                  for key in ("freshness", "retention", "sync-tags", "sync-interval")}
        stale = self.query_one("#stale", Checkbox).value
        deleted = self.query_one("#deleted", Checkbox).value
        name = self._rule.name

        def save(backend: Backend) -> CacheRule:
            settings = parse_rule_settings({
                "freshness": values["freshness"], "retention": values["retention"], "serve_stale_on_error": stale,
                "serve_stale_if_deleted": deleted, "sync_tags": values["sync-tags"],
                "sync_interval": values["sync-interval"]})
            return backend.control.update_rule(name, **settings)

        self.submit(save)
