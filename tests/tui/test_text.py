"""tui/text.py: a data value becomes text that is never markup and never a control sequence; and the
TUI's sources hand widgets no string built from data (an f-string to Static, Label, a cell or notify)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from textual.content import Content

from regcache.tui.text import ESCAPE_STYLE, MAX_CHARS, printable, text, typed

TUI = Path(__file__).resolve().parents[2] / "tui"
#: what a terminal must never receive from data: C0, DEL, C1, bidi controls, line separators, surrogates
CONTROLS = {*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u061c", "\u200e", "\u200f", "\u2028", "\u2029",
            *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}

MARKUP = ["a[/b]c", "[bold]x", "[link=https://evil.example]y", "[@click=app.quit]z", "unbalanced [", "[/]",
          "[::1]:5443", "[on red]", r"\[escaped]"]


@pytest.mark.parametrize("value", MARKUP)
def test_markup_is_shown_as_written(value):
    shown = text(value)
    assert shown.plain == value and shown.spans == []
    assert Content.from_rich_text(shown).plain == value  # what Static and Label draw
    console = Console(width=200, record=True, color_system=None)
    console.print(shown)
    assert console.export_text().rstrip("\n") == value


@pytest.mark.parametrize(("value", "shown"), [
    ("\x1b]52;c;ZXZpbA==\x07", "\\x1b]52;c;ZXZpbA==\\x07"),  # OSC 52: write the clipboard
    ("\x1b[2J", "\\x1b[2J"),
    ("ring\x07", "ring\\x07"),
    ("over\rwrite", "over\\x0dwrite"),
    ("txt\u202eexe", "txt\\u202eexe"),
    ("\x9b2J", "\\x9b2J"),  # C1 CSI
    ("a\x00b\x7fc", "a\\x00b\\x7fc"),
    ("two\nlines\tand\u2028", "two\\x0alines\\x09and\\u2028"),
    ("lone \udcff", "lone \\udcff"),  # a surrogate the terminal's encoder would choke on
    ("é 漢字 ✓", "é 漢字 ✓"),
])
def test_control_characters_are_spelled_out(value, shown):
    assert printable(value) == shown
    rendered = text(value, "red")
    assert rendered.plain == shown and rendered.style == "red"
    escaped = [rendered.plain[span.start:span.end] for span in rendered.spans if span.style == ESCAPE_STYLE]
    assert escaped == [printable(ch) for ch in value if printable(ch) != ch]  # set apart from typed text


@given(st.text())
def test_nothing_printable_holds_a_control_character(value):
    assert not CONTROLS & set(printable(value, limit=None))
    assert not CONTROLS & set(text(value).plain)
    assert not CONTROLS & set(typed(value)) and len(typed(value)) == len(value)


@given(st.text(st.characters(blacklist_characters=sorted(CONTROLS), blacklist_categories=("Cs",)), max_size=MAX_CHARS))
def test_ordinary_text_is_unchanged(value):
    assert printable(value) == value == text(value).plain


def test_long_values_are_cut():
    shown = printable("x" * 100_000)
    assert shown == "x" * MAX_CHARS + "…"
    assert printable("y" * 5000, limit=None) == "y" * 5000


def test_multiline_keeps_only_line_feeds():
    assert printable("a\nb\x1b[2J\r\n", multiline=True) == "a\nb\\x1b[2J\\x0d\n"
    assert text("a\nb", multiline=True).plain == "a\nb"


def test_typed_keeps_the_cursor_positions():
    assert typed("a\x1b[2Jb\u202e") == "a\ufffd[2Jb\ufffd"


# -- the sources: no data reaches a widget as a str that would be parsed -------------------------------

#: what parses a str as markup (or draws control characters as they are)
_PARSES = {"Static", "Label", "update", "add_row", "Option", "Button", "Checkbox", "RadioButton"}


def _sources() -> list[Path]:
    files = [TUI / "app.py", TUI / "backend.py", TUI / "format.py"]
    for package in ("blades", "screens", "widgets"):
        files += sorted((TUI / package).glob("*.py"))
    return files


def _name(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def _built_string(node: ast.AST) -> bool:
    """An f-string, a concatenation, ``str(...)`` or ``.format(...)``: a str that may hold data."""
    if isinstance(node, (ast.JoinedStr, ast.BinOp)):
        return True
    if isinstance(node, ast.IfExp):
        return _built_string(node.body) or _built_string(node.orelse)
    return isinstance(node, ast.Call) and _name(node) in ("str", "format", "join")


def test_sources_give_widgets_text_not_built_strings():
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(TUI)}:{node.lineno}"
            name = _name(node)
            if name in _PARSES and any(_built_string(arg) for arg in node.args):
                found.append(f"{where}: {name}() of a built str: wrap it in text()")
            if name == "notify" and isinstance(node.func, ast.Attribute):
                found.append(f"{where}: .notify() parses markup: use regcache.tui.text.notify")
            if name == "Input" and path.name != "text_input.py":
                found.append(f"{where}: Input() draws control characters: use TextInput")
    assert found == []


def test_the_source_check_sees_a_built_string():
    bad = ast.parse('Static(f"rule {name}"); self.notify("x"); Label("a" + b); Input("x")')
    calls = [n for n in ast.walk(bad) if isinstance(n, ast.Call)]
    assert [_name(c) for c in calls if any(_built_string(a) for a in c.args)] == ["Static", "Label"]
