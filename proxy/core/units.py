"""Durations (``10m``, ``30d``) and sizes (``50GiB``) as operators write them."""

from __future__ import annotations

import re
from typing import overload

from regcache.proxy.core.errors import ValidationError

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5, "ki": 1024, "kib": 1024,
               "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
               "pi": 1024**5, "pib": 1024**5}


def parse_duration(text: str, field: str | None = None) -> float:
    """Seconds in ``45s``, ``10m``, ``2h``, ``30d``, ``1w`` (a bare number is seconds)."""
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValidationError(f"duration {text!r} must be a number with s, m, h, d or w, e.g. 10m or 30d",
                              field=field)
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]


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
    m = _SIZE.fullmatch(text)
    unit = (m.group(2) or "").lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ValidationError(f"size {text!r} must be a number with a unit such as MB, GB, MiB or GiB, e.g. 50GiB",
                              field=field)
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


@overload
def format_size(n: int) -> str: ...
@overload
def format_size(n: None) -> None: ...
def format_size(n: int | None) -> str | None:
    if n is None:
        return None
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"
