"""Warm an image into the cache, or test what a rule maps it to: ask for the image, show the outcome."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from regcache.proxy.core.errors import RegcacheError, unwrap_error
from regcache.proxy.core.models import CacheRule
from regcache.proxy.core.units import format_size

from ..progress import layer_line, rate, warm_line
from ..text import printable, text
from ..widgets.form_row import FormRow
from ..widgets.key_bar import KeyBar
from ..widgets.text_input import TextInput

if TYPE_CHECKING:
    from regcache.proxy.jobs.prefetch import WarmProgress

#: seconds between redraws of a warm's progress
PROGRESS_REFRESH = 0.25
#: layers listed at once (the newest; an image may have dozens)
MAX_LAYER_LINES = 8


class ImageActionScreen(ModalScreen[None]):
    """``warm`` pulls the image into the cache; ``test`` probes the rule's mapping, caching nothing."""

    BINDINGS = [Binding("escape", "close", "Close", id="image.close"),
                Binding("ctrl+s", "run", "Run", id="image.run")]

    def __init__(self, rule: CacheRule, mode: str) -> None:
        super().__init__()
        self.rule = rule
        self.mode = mode

    def compose(self) -> ComposeResult:
        title = "Warm an image into the cache" if self.mode == "warm" else "Test the rule with an image"
        rule = self.rule
        example = f"{rule.target_prefix}/app:1.0" if rule.is_wildcard else f"{rule.target_repository}:latest"
        with Vertical(classes="dialog"):
            yield Label(text(f"{title}: {self.rule.name}"), classes="title")
            yield FormRow("Image", TextInput(placeholder=printable(f"TARGET_REPO:TAG, e.g. {example.lstrip('/')}"),
                                         id="image", compact=True))
            if self.mode == "warm":
                yield FormRow("Platform", TextInput("linux/amd64", id="platform", placeholder="os/arch, or all",
                                                compact=True))
            yield Static("", id="outcome", classes="detail")
            with Horizontal(classes="buttons"):
                yield Button("Run (ctrl+s)", variant="primary", id="run")
                yield Button("Close (esc)", id="close")
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one("#image").focus()
        #: the warm's latest progress, set from the engine's thread (an assignment: no lock, no waiting on the UI)
        self.progress: WarmProgress | None = None
        self.running = False
        self.set_interval(PROGRESS_REFRESH, self.show_progress)

    def show_progress(self) -> None:
        """The warm so far: bytes, rate and time left for the image and each layer (the newest last)."""
        progress = self.progress
        if not self.running or progress is None:
            return
        lines = [warm_line(progress)]
        active = [layer for layer in progress.layers if layer.state != "waiting"]
        shown = active[-MAX_LAYER_LINES:]
        if len(active) > len(shown):
            lines.append(f"  ({len(active) - len(shown)} earlier blobs done)")
        lines += [f"  {layer_line(layer)}" for layer in shown]
        self.query_one("#outcome", Static).update(text("\n".join(printable(line) for line in lines), multiline=True))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_run() if event.button.id == "run" else self.action_close()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_run()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_run(self) -> None:
        image = self.query_one("#image", Input).value.strip()
        platform = self.query_one("#platform", Input).value.strip() if self.mode == "warm" else ""
        self.query_one("#outcome", Static).update(text("working..."))
        self.progress = None
        self.running = True
        self.run_image_action(image, platform)

    @work(thread=True, exclusive=True, group="image-action")
    def run_image_action(self, image: str, platform: str) -> None:
        backend = self.app.backend  # type: ignore[attr-defined]
        try:
            if self.mode == "warm":
                chosen = None if platform == "all" else platform or None
                started = time.monotonic()
                result = backend.run_job(lambda ops: ops.warm(image, chosen, on_progress=self._progressed))
                seconds = time.monotonic() - started
                took = (f" in {seconds:.1f} s ({rate(result.bytes_fetched / seconds)})"
                        if result.bytes_fetched and seconds else "")
                outcome = (f"{printable(result.repository)}@{printable(result.digest)}\n{result.blobs} blob(s): "
                           f"fetched {format_size(result.bytes_fetched)} from the upstream{took}, "
                           f"{format_size(result.bytes_cached)} already cached")
            else:
                probe = backend.run_job(lambda ops: ops.test_rule(self.rule.name, image))
                fields = dataclasses.asdict(probe)
                outcome = "\n".join(f"{k.replace('_', ' '):>18}  {'-' if v is None else printable(v)}"
                                     for k, v in fields.items())
        except BaseException as exc:  # shown in the dialog: the operator fixes the input and runs again
            inner = unwrap_error(exc)
            if not isinstance(inner, RegcacheError):
                raise
            outcome = f"error: {printable(inner)}"
        self.app.call_from_thread(self._done, outcome)

    def _progressed(self, progress: WarmProgress) -> None:
        self.progress = progress  # called in the engine's loop: keep it, the screen's timer shows it

    def _done(self, outcome: str) -> None:
        self.running = False
        self.query_one("#outcome", Static).update(text(outcome, multiline=True))
