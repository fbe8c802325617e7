"""The state directory and its SQLite database: the only module that speaks SQL.

One state directory (``--home``, ``$REGCACHE_HOME`` or ``$XDG_DATA_HOME/regcache``) holds
``state.db`` and ``blobs/``. Several processes (the TUI, ``regcache serve``, CLI commands) share it:
the database runs in WAL mode with a busy timeout, and every read-validate-write sequence runs in
one ``BEGIN IMMEDIATE`` transaction so two writers cannot both pass a validation.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlite_utils import Database

from .errors import StateError
from .migrations import MIGRATIONS
from .models import AuthPolicy, CacheRule, CredentialHealth, CredentialSet, HealthStatus, Upstream, utc_now

BUSY_TIMEOUT_MS = 30_000


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: ``home`` if given, else ``$REGCACHE_HOME``, else the XDG data dir."""
    if home:
        return Path(home).expanduser()
    if env := os.environ.get("REGCACHE_HOME"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(xdg) / "regcache"


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _rule(row: dict) -> CacheRule:
    return CacheRule(row["name"], row["source_repository"], row["target_repository"],
                     row["credential_set"], _dt(row["created_at"]))


def _credential_set(row: dict) -> CredentialSet:
    health = CredentialHealth(
        HealthStatus(row["health_status"]), row["health_error_code"], row["health_message"],
        _dt(row["health_checked_at"]),
    )
    return CredentialSet(row["name"], row["login_server"], row["username_secret_id"],
                         row["password_secret_id"], health, _dt(row["created_at"]))


class StateStore:
    """The SQLite state of one state directory. One instance per thread."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / "state.db"
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from None
        self.db = Database(conn, execute_plugins=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateError(f"the state database {self.path} cannot be used: {exc}") from None

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None) -> StateStore:
        return cls(resolve_home(home))

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction that holds the write lock from its first statement."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction():
            self.db["migrations"].create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
            applied = {row["name"] for row in self.db["migrations"].rows}
            for fn in MIGRATIONS:
                if fn.__name__ not in applied:
                    fn(self.db)
                    self.db["migrations"].insert({"name": fn.__name__, "applied_at": _ts(utc_now())})

    def applied_migrations(self) -> list[str]:
        return [row["name"] for row in self.db["migrations"].rows_where(order_by="rowid")]

    # -- cache rules ---------------------------------------------------------------------------

    def cache_rules(self) -> list[CacheRule]:
        return [_rule(r) for r in self.db["cache_rules"].rows_where(order_by="created_at, rowid")]

    def cache_rule(self, name: str) -> CacheRule | None:
        rows = list(self.db["cache_rules"].rows_where("name = ?", [name]))
        return _rule(rows[0]) if rows else None

    def insert_cache_rule(self, rule: CacheRule) -> None:
        self.db["cache_rules"].insert({
            "name": rule.name, "source_repository": rule.source_repository,
            "target_repository": rule.target_repository, "credential_set": rule.credential_set,
            "created_at": _ts(rule.created_at),
        })

    def set_rule_credential_set(self, name: str, credential_set: str | None) -> None:
        self.db["cache_rules"].update(name, {"credential_set": credential_set})

    def delete_cache_rule(self, name: str) -> None:
        self.db["cache_rules"].delete(name)

    def rules_using_credential_set(self, credential_set: str) -> list[str]:
        return [r["name"] for r in self.db["cache_rules"].rows_where(
            "credential_set = ?", [credential_set], select="name", order_by="name")]

    def rules_with_source_on(self, login_server: str) -> list[str]:
        return [r["name"] for r in self.db["cache_rules"].rows_where(
            "source_repository LIKE ? ESCAPE '\\'", [login_server.replace("_", "\\_").replace("%", "\\%") + "/%"],
            select="name", order_by="name")]

    # -- credential sets -----------------------------------------------------------------------

    def credential_sets(self) -> list[CredentialSet]:
        return [_credential_set(r) for r in self.db["credential_sets"].rows_where(order_by="created_at, rowid")]

    def credential_set(self, name: str) -> CredentialSet | None:
        rows = list(self.db["credential_sets"].rows_where("name = ?", [name]))
        return _credential_set(rows[0]) if rows else None

    def upsert_credential_set(self, cs: CredentialSet) -> None:
        self.db["credential_sets"].upsert({
            "name": cs.name, "login_server": cs.login_server,
            "username_secret_id": cs.username_secret_id, "password_secret_id": cs.password_secret_id,
            "health_status": cs.health.status.value, "health_error_code": cs.health.error_code,
            "health_message": cs.health.message, "health_checked_at": _ts(cs.health.checked_at),
            "created_at": _ts(cs.created_at),
        }, pk="name")

    def delete_credential_set(self, name: str) -> None:
        self.db["credential_sets"].delete(name)

    # -- upstreams -----------------------------------------------------------------------------

    def custom_upstreams(self) -> list[Upstream]:
        return [
            Upstream(r["login_server"], r["base_url"], AuthPolicy(r["auth_policy"]), False, "custom")
            for r in self.db["upstreams"].rows_where("kind = 'custom'", order_by="login_server")
        ]

    def upstream_overrides(self) -> dict[str, str]:
        return {r["login_server"]: r["base_url"] for r in self.db["upstreams"].rows_where("kind = 'override'")}

    def upsert_upstream(self, login_server: str, base_url: str, auth_policy: AuthPolicy | None, kind: str) -> None:
        self.db["upstreams"].upsert({
            "login_server": login_server, "base_url": base_url,
            "auth_policy": auth_policy.value if auth_policy else None, "kind": kind,
            "created_at": _ts(utc_now()),
        }, pk="login_server")

    def delete_upstream(self, login_server: str) -> bool:
        existed = bool(list(self.db["upstreams"].rows_where("login_server = ?", [login_server])))
        if existed:
            self.db["upstreams"].delete(login_server)
        return existed

    # -- settings ------------------------------------------------------------------------------

    def setting(self, key: str, default: str | None = None) -> str | None:
        rows = list(self.db["settings"].rows_where("key = ?", [key]))
        return rows[0]["value"] if rows else default

    def set_setting(self, key: str, value: str) -> None:
        self.db["settings"].upsert({"key": key, "value": value}, pk="key")
