"""Durations (``10m``, ``30d``) and sizes (``50GiB``) as operators write them."""

from __future__ import annotations

import math
import re
from typing import overload

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.text import check_printable

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5, "ki": 1024, "kib": 1024,
               "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
               "pi": 1024**5, "pib": 1024**5}
#: beyond these a value means nothing (and would not survive float or int conversion): 1,000 years, 1 EiB
MAX_DURATION = 1000 * 365 * 86400
MAX_SIZE = 1024**6


def parse_duration(text: str, field: str | None = None) -> float:
    """Seconds in ``45s``, ``10m``, ``2h``, ``30d``, ``1w`` (a bare number is seconds)."""
    m = _DURATION.fullmatch(check_printable(text, field, field or "the duration", max_length=64))
    if not m:
        raise ValidationError(f"duration {text!r} must be a number with s, m, h, d or w, e.g. 10m or 30d",
                              field=field)
    seconds = float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValidationError(f"duration {text!r} is longer than 1,000 years", field=field)
    return seconds


def format_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    for unit in ("w", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_size(text: str, field: str | None = None) -> int:
    """Bytes in ``500MB``, ``50GiB``, ``1.5TiB`` (a bare number is bytes)."""
    m = _SIZE.fullmatch(check_printable(text, field, field or "the size", max_length=64))
    unit = (m.group(2) or "").lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ValidationError(f"size {text!r} must be a number with a unit such as MB, GB, MiB or GiB, e.g. 50GiB",
                              field=field)
    size = float(m.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(size) or size > MAX_SIZE:
        raise ValidationError(f"size {text!r} is larger than 1EiB", field=field)
    return int(size)


_SIZE_UNITS_UP = (("B", 1), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3), ("TiB", 1024**4))


@overload
def format_size(n: int) -> str: ...
@overload
def format_size(n: None) -> None: ...
def format_size(n: int | None) -> str | None:
    """``4.8 MiB``, ``4 MiB``, ``512 B``: the one way sizes are written, by the CLI, the TUI and the engine's
    messages (``parse_size`` reads it back). One decimal, dropped when it is 0, in the largest unit the size
    reaches (a size that rounds up to 1024 of one unit is written as 1 of the next: ``1 MiB``)."""
    if n is None:
        return None
    index = sum(n >= size for _, size in _SIZE_UNITS_UP[1:])  # the largest unit n reaches (0: bytes)
    if index == 0:
        return f"{n} B"
    value = round(n / _SIZE_UNITS_UP[index][1], 1)
    if value >= 1024 and index + 1 < len(_SIZE_UNITS_UP):
        index += 1
        value = round(n / _SIZE_UNITS_UP[index][1], 1)
    unit = _SIZE_UNITS_UP[index][0]
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"


def format_count(n: int, singular: str | None = None, plural: str | None = None) -> str:
    """``1,000``, or with a noun ``1 credential set`` / ``2 credential sets`` (``plural`` when adding an
    ``s`` is wrong: ``repository``/``repositories``): the one way counts are written, CLI and TUI alike."""
    if singular is None:
        return f"{n:,}"
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"
