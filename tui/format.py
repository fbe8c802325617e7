"""Short human-readable forms for the TUI's tables."""

from __future__ import annotations

from datetime import datetime, timezone


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def when(value: datetime | None, now: datetime | None = None) -> str:
    """``12:04:31`` today, else ``2026-11-26 12:04``, in UTC (what the logs use)."""
    if value is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    value = value.astimezone(timezone.utc)
    return value.strftime("%H:%M:%S") if value.date() == now.date() else value.strftime("%Y-%m-%d %H:%M")


def duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"
