"""The state directory and its database: location, WAL, migrations, concurrent writers."""

from __future__ import annotations

import logging
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


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_state_database_is_private_from_its_creation(tmp_path: Path, caplog):
    home = tmp_path / "home"
    with caplog.at_level(logging.WARNING, "regcache.state"):
        store = StateStore.open(home)
        store.set_setting("max-size", "1")  # a write: the WAL and shared-memory files exist now
    try:
        assert {name: _mode(home / name) for name in ("state.db", "state.db-wal", "state.db-shm")} == dict.fromkeys(
            ("state.db", "state.db-wal", "state.db-shm"), 0o600)
        assert _mode(home) == 0o700
        assert not [r for r in caplog.records if r.name == "regcache.state"]  # nothing was ever open
    finally:
        store.close()


def _widen(home: Path) -> None:
    """An existing state directory as an older version, a restore or a hand-made directory left it."""
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        if (home / name).exists():
            (home / name).chmod(0o644)
    (home / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for path in (home / "blobs", home / "blobs" / "sha256", home):
        path.chmod(0o755)


def test_an_existing_open_state_directory_is_made_private_at_every_open(tmp_path: Path, caplog):
    home = tmp_path / "home"
    store = StateStore.open(home)
    store.set_setting("max-size", "1")
    (home / "blobs" / "sha256" / "ab").mkdir(parents=True)
    blob = home / "blobs" / "sha256" / "ab" / "blob"
    blob.write_bytes(b"x")
    for attempt in range(2):  # not only when created: every open checks again
        _widen(home)
        caplog.clear()
        with caplog.at_level(logging.WARNING, "regcache.state"):
            StateStore.open(home).close()
        assert _mode(home) == 0o700
        assert all(_mode(home / name) == 0o600 for name in ("state.db", "state.db-wal", "state.db-shm"))
        assert _mode(home / "blobs") == 0o700 and _mode(home / "blobs" / "sha256") == 0o700
        warnings = [r.getMessage() for r in caplog.records if r.name == "regcache.state"]
        assert len(warnings) == 1, warnings
        assert "open to other users" in warnings[0] and f"{home} (was 0755)" in warnings[0]
        assert "state.db (was 0644)" in warnings[0] and "state.db-wal (was 0644)" in warnings[0]
    assert blob.read_bytes() == b"x"  # the blobs are untouched: the private directories keep others out
    store.close()


def test_the_proxy_makes_an_existing_state_directory_private_when_it_starts(tmp_path: Path, keyring_env, caplog):
    from tests.proxy.conftest import start_regcache

    home = tmp_path / "home"
    StateStore.open(home).close()
    _widen(home)
    with caplog.at_level(logging.WARNING, "regcache.state"):
        rc = start_regcache(home)
    try:
        with rc.http() as http:
            assert http.get("/v2/").status_code == 200
        assert _mode(home) == 0o700 and _mode(home / "state.db") == 0o600
        assert all(_mode(p) == 0o600 for p in home.glob("state.db*"))
        assert any("open to other users" in r.getMessage() for r in caplog.records)
    finally:
        rc.proxy.stop()
        rc.control.close()


def test_a_second_open_in_one_process_keeps_the_first_connection_current(home):
    """Opening the database again in a process (the TUI's engine and its screens, a job's own engine) must not
    drop the locks of the connections already open: another process (a CLI command) closing its connection
    would take itself for the last one, delete the WAL and shared memory, and the first connection would read
    a stale database from then on (a health the CLI recorded never reaching the TUI)."""
    import subprocess

    from tests.helpers.commands import regcache_executable

    first = StateStore.open(home)
    second = StateStore.open(home)
    try:
        assert first.setting("max-size") is None
        for size in ("1GiB", "2GiB"):
            subprocess.run([regcache_executable(), "--home", str(home), "settings", "set", "max-size", size],
                           check=True, capture_output=True, timeout=60)
            assert (home / "state.db-shm").exists()  # still shared: the command did not take itself for the last
        assert first.setting("max-size") == str(2 * 1024**3)
        assert second.setting("max-size") == str(2 * 1024**3)
    finally:
        first.close()
        second.close()


def test_m011_keeps_only_health_that_was_a_login_result(home, monkeypatch):
    """Health written by reads (a secret found, or not found in some shell) is forgotten; a refusal by the
    upstream stays until the next login."""
    from regcache.proxy.core.models import CredentialHealth, CredentialSet

    before = [m for m in MIGRATIONS if m.__name__ != "m011_credential_health"]
    monkeypatch.setattr("regcache.proxy.state.store.MIGRATIONS", before)
    store = StateStore.open(home)
    try:
        for name, health in (("read-ok", CredentialHealth.healthy()),
                             ("read-missing", CredentialHealth.unhealthy("SecretNotFound", "not in this shell")),
                             ("refused", CredentialHealth.unhealthy("UpstreamAuthFailed", "HTTP 401"))):
            store.upsert_credential_set(CredentialSet(name, "docker.io", "env://U", "env://P", health))
    finally:
        store.close()
    monkeypatch.setattr("regcache.proxy.state.store.MIGRATIONS", MIGRATIONS)
    store = StateStore.open(home)
    try:
        health = {cs.name: cs.health for cs in store.credential_sets()}
        assert store.applied_migrations()[-1] == "m011_credential_health"
    finally:
        store.close()
    assert {n: (h.status.value, h.error_code) for n, h in health.items()} == {
        "read-ok": ("Unknown", None), "read-missing": ("Unknown", None), "refused": ("Unhealthy", "UpstreamAuthFailed")}
    assert health["read-ok"].checked_at is None and health["refused"].message == "HTTP 401"
