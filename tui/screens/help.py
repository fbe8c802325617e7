"""Help (? or F1): every key of the screen it was opened on, grouped by where it works, and the app's.

The keys are read from the bindings themselves (the focused widget and its containers, the blade shown,
the screen, the app), so the help cannot drift from what the keys do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static

from ..text import text
from ..widgets.key_bar import KeyBar
from ..widgets.nav import BLADES


@dataclass(frozen=True, slots=True)
class HelpSection:
    """The keys that work in one place: ``(keys, what they do)`` in the order they are bound."""

    title: str
    keys: tuple[tuple[str, str], ...]


def _where(node: DOMNode, app: App) -> str:
    if node is app:
        return "Everywhere"
    if isinstance(node, Screen):
        return "This screen" if node.is_modal else "Main screen"
    blades = dict(BLADES)
    if node.id in blades:
        return f"{blades[node.id]} blade"
    name = type(node).__name__
    return {"DataTable": "Tables", "RowTable": "Tables", "Input": "Text fields", "TextInput": "Text fields",
            "NavList": "Blade list", "OptionList": "Lists", "Select": "Drop-down lists", "Checkbox": "Check boxes",
            "RadioSet": "Choices", "Button": "Buttons", "VerticalScroll": "Scrolling"}.get(name, name)


def _keys(app: App, bindings: Iterable[Binding]) -> tuple[tuple[str, str], ...]:
    """``(keys, description)`` per action, keys that do the same joined (``? f1``); undescribed ones left out."""
    by_action: dict[tuple[str, str], list[str]] = {}
    for binding in bindings:
        if binding.description:
            shown = app.get_key_display(binding)
            keys = by_action.setdefault((binding.action, binding.description), [])
            if shown not in keys:
                keys.append(shown)
    return tuple((" ".join(keys), description) for (_, description), keys in by_action.items())


def help_sections(app: App, screen: Screen) -> list[HelpSection]:
    """What each key does on ``screen`` now: the blade shown (on the main screen, even while the blade list
    has the focus), the screen, the focused widget and its containers, and the app (on a modal screen only
    its keys that work on top of every screen)."""
    nodes: list[DOMNode] = []
    bindings: dict[int, list[Binding]] = {}
    for active in screen.active_bindings.values():  # what the keys do now: a focused field keeps its keys
        if id(active.node) not in bindings:
            nodes.append(active.node)
            bindings[id(active.node)] = []
        bindings[id(active.node)].append(active.binding)
    blades: list[DOMNode] = [blade for blade in screen.query("Blade") if blade.display]
    for node in [*blades, *(table for blade in blades for table in blade.query("DataTable")), app]:
        if node in blades or id(node) not in bindings:
            # a blade's own keys, also those its table shadows (enter) and while the blade list has the focus;
            # the app's keys that work on top of a modal screen (priority ones)
            own = [b for _, b in node._bindings if node is not app or b.priority or not screen.is_modal]
            if own and id(node) not in bindings:
                nodes.append(node)
            bindings[id(node)] = own
    # the blade's or the screen's own keys first, then the focused widget's and its containers', the app's
    nodes.sort(key=lambda n: (n not in blades, not isinstance(n, Screen), n is app))
    seen_titles: dict[str, int] = {}
    sections: list[HelpSection] = []
    for node in nodes:
        keys = _keys(app, bindings[id(node)])
        if not keys:
            continue
        title = _where(node, app)
        if title in seen_titles:  # e.g. two tables: one section
            index = seen_titles[title]
            merged = sections[index].keys + tuple(k for k in keys if k not in sections[index].keys)
            sections[index] = HelpSection(title, merged)
            continue
        seen_titles[title] = len(sections)
        sections.append(HelpSection(title, keys))
    return sections


class HelpScreen(ModalScreen[None]):
    """The keys of the screen below, in sections; scroll with the arrows, close with esc, q, ? or F1."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", id="help.close")]

    def __init__(self, sections: list[HelpSection], title: str) -> None:
        super().__init__()
        self.sections = sections
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help"):
            yield Label(text(f"Keys: {self.title_text}"), classes="title")
            with VerticalScroll(id="help-keys"):
                for section in self.sections:
                    yield Static(self._section(section), classes="help-section")
        yield KeyBar()

    @staticmethod
    def _section(section: HelpSection) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(width=14, no_wrap=True, style="bold")
        table.add_column()
        table.add_row(text(section.title, "bold underline"), Text())
        for keys, description in section.keys:
            table.add_row(text(keys), text(description))
        return table

    def on_mount(self) -> None:
        self.query_one("#help-keys").focus()

    def action_close(self) -> None:
        self.dismiss(None)
