"""Data on the screen: always text, never Rich/Textual markup, never a control sequence.

Everything the TUI shows from data (names, references, client addresses, upstream headers, secret ids,
tag filters, error messages) may come from a hostile client or upstream. Textual parses a ``str`` given
to ``Static``, ``Label``, a DataTable cell or ``notify`` as markup (``a[/b]c`` raises MarkupError and ends
the app; ``[@click=app.quit]`` is a live action), and passes ESC, C1 and bidi controls through to the
terminal (OSC 52 writes the clipboard, ``ESC[2J`` clears the screen). So every data value reaches a
widget through :func:`text` (a ``rich.text.Text``), or through :func:`printable` where Textual wants a
``str`` that it does not parse (``notify(..., markup=False)`` via :func:`notify`, titles, inputs).
What an operator types or pastes into an input is kept free of control characters by :func:`typed`
(:class:`regcache.tui.widgets.text_input.TextInput`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.style import StyleType
from rich.text import Text

from regcache.proxy.core.errors import RegcacheError, unwrap_error

if TYPE_CHECKING:
    from typing import Any

    from textual.app import App
    from textual.notifications import SeverityLevel
    from textual.widget import Widget

#: at most this many characters of one value are shown (a header or an error may be kilobytes long)
MAX_CHARS = 1000
#: how an escaped control character looks: set apart from the text an attacker could type
ESCAPE_STYLE = "reverse"
#: characters that reorder or hide the text around them (Trojan Source): bidi embeddings, overrides,
#: isolates and marks, and the line and paragraph separators
_INVISIBLE = frozenset({0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)})


def _is_control(ch: str) -> bool:
    """C0 (with tab and line feed), DEL, C1, lone surrogates, bidi controls and line separators."""
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or code in _INVISIBLE or 0xD800 <= code <= 0xDFFF


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _pieces(value: object, limit: int | None, multiline: bool) -> list[tuple[str, bool]]:
    """``str(value)`` cut at ``limit`` characters, as (piece, is an escape) in order."""
    raw = "" if value is None else str(value)
    cut = limit is not None and len(raw) > limit
    if cut:
        raw = raw[:limit]
    pieces: list[tuple[str, bool]] = []
    plain: list[str] = []
    for ch in raw:
        if _is_control(ch) and not (multiline and ch == "\n"):
            if plain:
                pieces.append(("".join(plain), False))
                plain = []
            pieces.append((_escape(ch), True))
        else:
            plain.append(ch)
    if plain:
        pieces.append(("".join(plain), False))
    if cut:
        pieces.append(("…", False))
    return pieces


def printable(value: object, *, limit: int | None = MAX_CHARS, multiline: bool = False) -> str:
    """``str(value)`` safe for a terminal, as a ``str``: each control character spelled out (``\\x1b``,
    ``\\u202e``), at most ``limit`` characters of it (then ``…``). ``multiline`` keeps line feeds: only
    for text the TUI composed itself from values already made printable. Markup is *not* escaped: give
    the result only to widgets that do not parse it, or to :func:`text`."""
    return "".join(piece for piece, _ in _pieces(value, limit, multiline))


def text(value: object, style: StyleType = "", *, limit: int | None = MAX_CHARS, multiline: bool = False) -> Text:
    """A data value as a ``rich.text.Text`` in ``style``: shown exactly as it is, never parsed as markup,
    with control characters spelled out in reverse video (see :func:`printable`)."""
    shown = Text(style=style)
    for piece, escaped in _pieces(value, limit, multiline):
        shown.append(piece, style=ESCAPE_STYLE if escaped else None)
    return shown


def typed(value: str) -> str:
    """What an input field holds of ``value`` (typed or pasted): each control character replaced by ``�``,
    one for one, since the field's cursor counts characters. A pasted ``ESC[2J`` stays on the screen."""
    return "".join("\ufffd" if _is_control(ch) else ch for ch in value)


def notify(target: Widget | App[Any], message: object, *, title: object = "", severity: SeverityLevel = "information",
           timeout: float | None = None) -> None:
    """``target.notify`` for a message that holds data: shown as text, never as markup."""
    target.notify(printable(message), title=printable(title), severity=severity, timeout=timeout, markup=False)


def notify_refusal(target: Widget, error: BaseException) -> None:
    """From a worker thread: the engine's refusal (a RegcacheError, however wrapped) shown as an error on
    ``target``; anything else is raised again, for the app to report as the bug it is."""
    inner = unwrap_error(error)
    if not isinstance(inner, RegcacheError):
        raise error
    target.app.call_from_thread(notify, target, str(inner), severity="error", timeout=10)
