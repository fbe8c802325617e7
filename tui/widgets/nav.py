"""The left navigation: the portal's blade list, for the keyboard."""

from __future__ import annotations

from textual.widgets import OptionList
from textual.widgets.option_list import Option

from ..messages import Navigate
from ..text import text

BLADES: tuple[tuple[str, str], ...] = (
    ("overview", "Overview"),
    ("rules", "Cache rules"),
    ("credentials", "Credentials"),
    ("activity", "Activity"),
    ("upstreams", "Upstreams"),
    ("tokens", "Tokens"),
)


class NavList(OptionList):
    """Blade names; moving the highlight shows that blade."""

    def __init__(self) -> None:
        super().__init__(*(Option(text(f"{i} {title}"), id=blade) for i, (blade, title) in enumerate(BLADES, 1)),
                         id="nav")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if event.option.id:
            self.post_message(Navigate(event.option.id))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id:
            self.post_message(Navigate(event.option.id))

    def select_blade(self, blade: str) -> None:
        index = next(i for i, (b, _) in enumerate(BLADES) if b == blade)
        if self.highlighted != index:
            self.highlighted = index
