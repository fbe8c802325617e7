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
