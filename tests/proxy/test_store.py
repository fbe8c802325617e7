"""The state directory and its database: location, WAL, migrations, concurrent writers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.errors import ConflictError, StateError
from regcache.proxy.state.migrations import MIGRATIONS
from regcache.proxy.state.store import StateStore, resolve_home


def test_home_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("REGCACHE_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_home() == tmp_path / "xdg" / "regcache"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert resolve_home() == tmp_path / "user" / ".local" / "share" / "regcache"
    monkeypatch.setenv("REGCACHE_HOME", str(tmp_path / "env"))
    assert resolve_home() == tmp_path / "env"
    assert resolve_home(tmp_path / "flag") == tmp_path / "flag"


def test_wal_busy_timeout_and_migrations(home):
    store = StateStore.open(home)
    try:
        conn = store.db.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        assert store.applied_migrations() == [m.__name__ for m in MIGRATIONS]
        assert {"cache_rules", "credential_sets", "upstreams", "settings", "migrations"} <= set(
            store.db.table_names())
    finally:
        store.close()
    # opening again applies nothing twice
    again = StateStore.open(home)
    try:
        assert again.applied_migrations() == [m.__name__ for m in MIGRATIONS]
    finally:
        again.close()


def test_a_new_migration_is_applied_once(home, monkeypatch):
    StateStore.open(home).close()
    calls = []

    def m999_example(db):
        calls.append(1)
        db["example"].create({"id": int}, pk="id")

    monkeypatch.setattr("regcache.proxy.state.store.MIGRATIONS", [*MIGRATIONS, m999_example])
    for _ in range(2):
        store = StateStore.open(home)
        assert store.applied_migrations()[-1] == "m999_example"
        store.close()
    assert calls == [1]


def test_unusable_database_is_a_state_error(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot be used"):
        StateStore.open(home)


def test_concurrent_overlapping_creates_let_exactly_one_win(home):
    """Two writers validating overlapping wildcards at once: the transaction admits one."""
    ControlPlane.open(home).close()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def create(i: int) -> None:
        control = ControlPlane.open(home)
        try:
            barrier.wait()
            target = "*" if i % 2 else "library/*"
            control.create_rule(f"rule-{i:03d}", "mcr.microsoft.com/*" if i % 2 else "mcr.microsoft.com/lib/*",
                                target)
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")
        finally:
            control.close()

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    control = ControlPlane.open(home)
    try:
        assert len(control.list_rules()) == 1
    finally:
        control.close()


def test_state_dir_created_private(tmp_path: Path):
    home = tmp_path / "a" / "b"
    StateStore.open(home).close()
    assert home.is_dir()
    assert home.stat().st_mode & 0o777 == 0o700
