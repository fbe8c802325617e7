"""Short human-readable forms for the TUI's tables (sizes and counts as the CLI writes them: core.units)."""

from __future__ import annotations

from datetime import datetime, timezone

from regcache.proxy.core.models import RateLimitRecord
from regcache.proxy.core.settings import DEFAULT_PREFIX, S3Storage, StorageConfig
from regcache.proxy.core.units import format_count, format_size


def size(n: int | None) -> str:
    """``4.8 MiB`` (:func:`~regcache.proxy.core.units.format_size`), ``-`` for none."""
    return "-" if n is None else format_size(n)


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def when(value: datetime | None, now: datetime | None = None) -> str:
    """``12:04:31`` today, ``11-26 12:04`` this year, else ``2025-11-26``; in UTC, as the logs."""
    if value is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    value = value.astimezone(timezone.utc)
    if value.date() == now.date():
        return value.strftime("%H:%M:%S")
    return value.strftime("%m-%d %H:%M") if value.year == now.year else value.strftime("%Y-%m-%d")


def reference(ref: str) -> str:
    """A tag as is; a digest shortened to ``sha256:1a2b3c4d5e6f`` (like docker's short ids)."""
    if ":" in ref:
        algorithm, _, encoded = ref.partition(":")
        return f"{algorithm}:{encoded[:12]}"
    return ref if len(ref) <= 24 else ref[:23] + "…"


def duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def count(n: int, singular: str | None = None, plural: str | None = None) -> str:
    """``1,000`` or ``1 credential set`` (:func:`~regcache.proxy.core.units.format_count`)."""
    return format_count(n, singular, plural)


def budget(rate_limit: RateLimitRecord | None) -> str:
    """``76/100`` from ``ratelimit-remaining: 76;w=21600`` and ``ratelimit-limit: 100;w=21600``, plus 429s."""
    if rate_limit is None:
        return "-"
    remaining = (rate_limit.remaining or "?").split(";")[0]
    limit = (rate_limit.limit or "?").split(";")[0]
    text = f"{remaining}/{limit}"
    if rate_limit.throttled:
        text += f" ({rate_limit.throttled}x429)"
    return text


def storage(config: StorageConfig) -> str:
    """``filesystem``, or ``s3 bucket NAME at ENDPOINT`` (with the key prefix when it is not the default)."""
    if not isinstance(config, S3Storage):
        return config.kind
    prefix = f" (prefix {config.prefix}/)" if config.prefix != DEFAULT_PREFIX else ""
    return f"s3 bucket {config.bucket} at {config.endpoint}{prefix}"
