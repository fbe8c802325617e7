"""The state directory as tests look at it."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def dump_database(home: Path) -> list[str]:
    """Every schema statement and row of ``state.db``, to compare before and after a command."""
    conn = sqlite3.connect(home / "state.db")
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def cached_tag(store, repository: str, tag: str) -> str | None:
    """The digest cached for ``repository:tag`` from any source (tags belong to sources; tests ask
    whether anything was cached at all)."""
    row = store.conn.execute("SELECT digest FROM tags WHERE repository = ? AND tag = ? ORDER BY validated_at DESC",
                             [repository, tag]).fetchone()
    return row[0] if row else None


def cached_tags(store, repository: str) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT DISTINCT tag FROM tags WHERE repository = ? ORDER BY tag",
                                             [repository])]
