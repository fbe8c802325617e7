"""Configured strings as text: refused when they carry control characters, escaped when shown.

Every string an operator configures (names, URLs, repositories, secret ids, tag filters, setting
values, rules-file fields) passes :func:`check_printable` in the core validator that owns it, so the
CLI, the TUI's forms and rules files refuse the same inputs. A control character in a configured
string is never meaningful: on a terminal it can move the cursor, recolour or retitle the window, and
bidirectional overrides make text read differently from what it is. Data that reaches a screen
anyway (an upstream's answer, a value stored before this check) goes through :func:`printable`,
which escapes the same characters so they show as text.
"""

from __future__ import annotations

import re

from regcache.proxy.core.errors import ValidationError

#: the longest configured string (a URL, a tag filter, a secret id); names and repositories are shorter
MAX_TEXT_LENGTH = 1024

#: C0 controls (tab, CR and LF included), DEL, C1 controls, the bidi marks, embeddings, overrides and
#: isolates (U+061C, U+200E-200F, U+202A-202E, U+2066-2069), and the line and paragraph separators
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BS", 0x09: "TAB", 0x0A: "LF", 0x0D: "CR", 0x1B: "ESC", 0x7F: "DEL",
          0x9B: "CSI", 0x202E: "RIGHT-TO-LEFT OVERRIDE", 0x202D: "LEFT-TO-RIGHT OVERRIDE",
          0x2066: "LEFT-TO-RIGHT ISOLATE", 0x2067: "RIGHT-TO-LEFT ISOLATE"}


def unsafe_character(value: str) -> tuple[int, str] | None:
    """The position and character of the first control or bidi character in ``value``, or ``None``."""
    m = _UNSAFE.search(value)
    return (m.start(), m.group()) if m else None


def describe_character(char: str) -> str:
    """``U+001B (ESC)``: a character named without printing it."""
    code = ord(char)
    name = _NAMES.get(code)
    return f"U+{code:04X}" + (f" ({name})" if name else "")


def check_printable(value: str, field: str | None = None, what: str | None = None,
                    max_length: int | None = MAX_TEXT_LENGTH) -> str:
    """``value`` unchanged, or a ValidationError if it holds a control or bidi character or is too long.

    ``what`` names the value in the message (default: ``field``); the value itself is never quoted back,
    as it may be long, or a secret pasted where its id belongs. ``max_length`` None: the caller bounds it.
    """
    label = what or (field.replace("_", " ") if field else "the value")
    if not isinstance(value, str):
        raise ValidationError(f"{label} must be text", field=field)
    if max_length is not None and len(value) > max_length:
        raise ValidationError(f"{label} is {len(value):,} characters long; the limit is {max_length:,}",
                              field=field)
    found = unsafe_character(value)
    if found is not None:
        position, char = found
        raise ValidationError(f"{label} contains the control character {describe_character(char)} at position "
                              f"{position + 1}; give plain text without control characters, line breaks, tabs "
                              f"or bidirectional overrides", field=field)
    return value


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(value: object, keep_newlines: bool = False) -> str:
    """``value`` as text that shows as itself on a terminal: control and bidi characters escaped
    (``\\x1b``, ``\\u202e``); line breaks kept when ``keep_newlines`` (multi-line documents)."""
    text = value if isinstance(value, str) else str(value)
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escape, text)
