"""The key bar at the bottom of every screen: the keys that work now, drawn as one line of text."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.screen import Screen
from textual.widget import Widget


class KeyBar(Widget, can_focus=False):
    """What Textual's Footer shows (each active binding's key and description, the command palette's key on the
    right), as one widget drawing one line.

    The Footer rebuilds a widget per key whenever the bindings change, which is at every focus change: that
    was half the CPU of a blade switch (about 45 of 90 ms), and a key press waited for it. This redraws a line,
    and only when what it shows changed. A click on a key presses it, as on the Footer.
    """

    COMPONENT_CLASSES = {"key-bar--key", "key-bar--description", "key-bar--palette"}

    def __init__(self) -> None:
        super().__init__()
        #: (key shown, description, enabled, key to press) of each binding shown, and the palette's
        self._keys: tuple[tuple[str, str, bool, str], ...] = ()
        self._palette: tuple[str, str, bool, str] | None = None
        #: (first cell, end cell, key to press) of each key drawn, for clicks
        self._spans: list[tuple[int, int, str]] = []

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        active = screen.active_bindings
        palette_key = self.app.COMMAND_PALETTE_BINDING if self.app.ENABLE_COMMAND_PALETTE else None
        keys: list[tuple[str, str, bool, str]] = []
        actions: set[str] = set()
        palette = None
        for key, (_, binding, enabled, _tooltip) in active.items():
            shown = (self.app.get_key_display(binding), binding.description, enabled, binding.key)
            if key == palette_key:  # shown on the right, as the Footer does, though the binding says show=False
                palette = shown
            elif binding.show and binding.action not in actions:  # one key per action, as the Footer shows
                actions.add(binding.action)
                keys.append(shown)
        if (tuple(keys), palette) != (self._keys, self._palette):
            self._keys, self._palette = tuple(keys), palette
            self.refresh()

    def render(self) -> Text:
        key_style = self.get_component_rich_style("key-bar--key")
        description_style = self.get_component_rich_style("key-bar--description")
        line = Text(no_wrap=True, overflow="crop", end="")
        spans: list[tuple[int, int, str]] = []
        for shown, description, enabled, key in self._keys:
            start = line.cell_len
            part = Text.assemble((f" {shown} ", key_style), (f"{description} " if description else "",
                                                              description_style))
            if not enabled:
                part.stylize("dim")
            line.append_text(part)
            spans.append((start, line.cell_len, key))
        if self._palette is not None:
            shown, description, enabled, key = self._palette
            part = Text.assemble(("\u258f", self.get_component_rich_style("key-bar--palette")),
                                 (shown, key_style), (f" {description} ", description_style))
            start = max(line.cell_len, self.size.width - part.cell_len)
            line.append(" " * (start - line.cell_len))
            line.append_text(part)
            spans.append((start, line.cell_len, key))
        self._spans = spans
        return line

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.app.simulate_key(key)
                return
