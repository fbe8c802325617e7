"""The state directory and its SQLite database: the only module that speaks SQL.

One state directory (``--home``, ``$REGCACHE_HOME`` or ``$XDG_DATA_HOME/regcache``) holds
``state.db`` and ``blobs/``. Several processes (the TUI, ``regcache serve``, CLI commands) share it:
the database runs in WAL mode with a busy timeout, and every read-validate-write sequence runs in
one ``BEGIN IMMEDIATE`` transaction so two writers cannot both pass a validation.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from regcache.proxy.core.errors import StateError
from regcache.proxy.core.models import (
    NOT_FETCHED_HERE,
    AuthPolicy,
    CacheRule,
    CredentialHealth,
    CredentialSet,
    HealthStatus,
    RateLimitRecord,
    TagSyncRecord,
    Upstream,
    UpstreamOverride,
    utc_now,
)
from regcache.proxy.core.tokens import ClientToken
from regcache.proxy.state.migrations import MIGRATIONS
from regcache.proxy.state.permissions import make_private

if TYPE_CHECKING:
    from sqlite_utils import Database

BUSY_TIMEOUT_MS = 30_000

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


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


def _origins(row: dict[str, Any]) -> tuple[str, ...]:
    """An upstream row's allowed origins (a JSON list, written by :meth:`StateStore.upsert_upstream`)."""
    return tuple(json.loads(row.get("allowed_origins") or "[]"))


def _required_dt(value: str | None, column: str, key: str) -> datetime:
    """A timestamp from a NOT NULL column; a damaged database gets a StateError naming the column and row."""
    when = _dt(value)
    if when is None:
        raise StateError(f"the state database has no {column} for {key!r}")
    return when


def _rule(row: dict) -> CacheRule:
    return CacheRule(row["name"], row["source_repository"], row["target_repository"],
                     row["credential_set"], _required_dt(row["created_at"], "cache_rules.created_at", row["name"]),
                     row["freshness_seconds"],
                     bool(row["serve_stale_on_error"]), bool(row["serve_stale_if_deleted"]),
                     row["retention_seconds"], row["sync_tags"], row["sync_interval_seconds"])


def _rule_settings(rule: CacheRule) -> dict:
    return {"freshness_seconds": rule.freshness, "serve_stale_on_error": int(rule.serve_stale_on_error),
            "serve_stale_if_deleted": int(rule.serve_stale_if_deleted), "retention_seconds": rule.retention,
            "sync_tags": rule.sync_tags, "sync_interval_seconds": rule.sync_interval}


def _credential_set(row: dict) -> CredentialSet:
    health = CredentialHealth(
        HealthStatus(row["health_status"]), row["health_error_code"], row["health_message"],
        _dt(row["health_checked_at"]),
    )
    return CredentialSet(row["name"], row["login_server"], row["username_secret_id"],
                         row["password_secret_id"], health,
                         _required_dt(row["created_at"], "credential_sets.created_at", row["name"]))


class StateStore:
    """The SQLite state of one state directory. One instance per thread."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / "state.db"
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            make_private(home)
            # made 0600 before SQLite opens it: its WAL and shared-memory files take the database's mode.
            # Only when absent: closing any descriptor of the database file drops every POSIX lock this
            # process holds on it, the shared locks of its open connections included; another process
            # closing its last connection would then take itself for the last one, checkpoint and delete
            # the WAL and shared memory under them, and this process would read a stale database from then on.
            if not self.path.exists():
                try:
                    os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:  # another thread or process made it meanwhile
                    pass
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from None
        self.conn = conn
        self._db: Database | None = None
        self._version_conn: sqlite3.Connection | None = None
        #: whether this SQLite has json_each (insert_events falls back to executemany once it finds none)
        self._json_rows = True
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

    @property
    def db(self) -> Database:
        """sqlite-utils over the connection, for writes and migrations; made when first needed, so that a
        command that only reads (``cache list``) does not pay for importing it."""
        if self._db is None:
            from sqlite_utils import Database

            self._db = Database(self.conn, execute_plugins=False)
        return self._db

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def close(self) -> None:
        if self._version_conn is not None:
            self._version_conn.close()
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction that holds the write lock from its first statement.

        Nested uses join the outer transaction, so several control-plane changes (a rules file)
        commit together or not at all.
        """
        conn = self.conn
        if conn.in_transaction:
            yield
            return
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
        try:  # the common case, every migration applied, needs one read and no sqlite-utils
            applied = {row[0] for row in self.conn.execute("SELECT name FROM migrations")}
        except sqlite3.OperationalError:  # a new database: no migrations table yet
            applied = set()
        if all(fn.__name__ in applied for fn in MIGRATIONS):
            return
        with self.transaction():
            self.db.table("migrations").create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
            applied = {row["name"] for row in self.db.table("migrations").rows}
            for fn in MIGRATIONS:
                if fn.__name__ not in applied:
                    fn(self.db)
                    self.db.table("migrations").insert({"name": fn.__name__, "applied_at": _ts(utc_now())})

    def applied_migrations(self) -> list[str]:
        return [row["name"] for row in self.db.table("migrations").rows_where(order_by="rowid")]

    # -- cache rules ---------------------------------------------------------------------------

    def cache_rules(self) -> list[CacheRule]:
        return [_rule(r) for r in self._rows("SELECT * FROM cache_rules ORDER BY created_at, rowid")]

    def cache_rule(self, name: str) -> CacheRule | None:
        rows = self._rows("SELECT * FROM cache_rules WHERE name = ?", [name])
        return _rule(rows[0]) if rows else None

    def insert_cache_rule(self, rule: CacheRule) -> None:
        self.db.table("cache_rules").insert({
            "name": rule.name, "source_repository": rule.source_repository,
            "target_repository": rule.target_repository, "credential_set": rule.credential_set,
            "created_at": _ts(rule.created_at), **_rule_settings(rule),
        })

    def update_cache_rule(self, rule: CacheRule) -> None:
        """Store what an update may change: the credential set and the settings."""
        self.db.table("cache_rules").update(rule.name, {"credential_set": rule.credential_set, **_rule_settings(rule)})

    def delete_cache_rule(self, name: str) -> None:
        self.db.table("cache_rules").delete(name)

    def rules_using_credential_set(self, credential_set: str) -> list[str]:
        return [r["name"] for r in self.db.table("cache_rules").rows_where(
            "credential_set = ?", [credential_set], select="name", order_by="name")]

    def rules_with_source_on(self, login_server: str) -> list[str]:
        return [r["name"] for r in self.db.table("cache_rules").rows_where(
            "source_repository LIKE ? ESCAPE '\\'", [login_server.replace("_", "\\_").replace("%", "\\%") + "/%"],
            select="name", order_by="name")]

    # -- credential sets -----------------------------------------------------------------------

    def credential_sets(self) -> list[CredentialSet]:
        return [_credential_set(r) for r in self._rows("SELECT * FROM credential_sets ORDER BY created_at, rowid")]

    def credential_set(self, name: str) -> CredentialSet | None:
        rows = self._rows("SELECT * FROM credential_sets WHERE name = ?", [name])
        return _credential_set(rows[0]) if rows else None

    def upsert_credential_set(self, cs: CredentialSet) -> None:
        self.db.table("credential_sets").upsert({
            "name": cs.name, "login_server": cs.login_server,
            "username_secret_id": cs.username_secret_id, "password_secret_id": cs.password_secret_id,
            "health_status": cs.health.status.value, "health_error_code": cs.health.error_code,
            "health_message": cs.health.message, "health_checked_at": _ts(cs.health.checked_at),
            "created_at": _ts(cs.created_at),
        }, pk="name")

    def record_credential_health(self, name: str, health: CredentialHealth) -> CredentialSet | None:
        """Store a health result on a credential set; None when the set no longer exists."""
        with self.transaction():
            cs = self.credential_set(name)
            if cs is None:
                return None
            cs = replace(cs, health=health)
            self.upsert_credential_set(cs)
        return cs

    def delete_credential_set(self, name: str) -> None:
        self.db.table("credential_sets").delete(name)

    # -- upstreams -----------------------------------------------------------------------------

    def custom_upstreams(self) -> list[Upstream]:
        return [
            Upstream(r["login_server"], r["base_url"], AuthPolicy(r["auth_policy"]), False, "custom",
                     allowed_origins=_origins(r), ca_bundle=r.get("ca_bundle") or None)
            for r in self._rows("SELECT * FROM upstreams WHERE kind = 'custom' ORDER BY login_server")
        ]

    def upstream_overrides(self) -> dict[str, UpstreamOverride]:
        """Built-in login server -> what overrides it (URL, allowed origins, CA bundle)."""
        return {r["login_server"]: UpstreamOverride(r["base_url"], _origins(r), r.get("ca_bundle") or None)
                for r in self._rows("SELECT * FROM upstreams WHERE kind = 'override'")}

    def upsert_upstream(self, login_server: str, base_url: str, auth_policy: AuthPolicy | None, kind: str,
                        allowed_origins: tuple[str, ...] = (), ca_bundle: str | None = None) -> None:
        self.db.table("upstreams").upsert({
            "login_server": login_server, "base_url": base_url,
            "auth_policy": auth_policy.value if auth_policy else None, "kind": kind,
            "allowed_origins": json.dumps(list(allowed_origins)), "ca_bundle": ca_bundle,
            "created_at": _ts(utc_now()),
        }, pk="login_server")

    def delete_upstream(self, login_server: str) -> bool:
        existed = bool(list(self.db.table("upstreams").rows_where("login_server = ?", [login_server])))
        if existed:
            self.db.table("upstreams").delete(login_server)
        return existed

    # -- settings ------------------------------------------------------------------------------

    def setting(self, key: str, default: str | None = None) -> str | None:
        rows = self._rows("SELECT * FROM settings WHERE key = ?", [key])
        return rows[0]["value"] if rows else default

    def set_setting(self, key: str, value: str) -> None:
        self.db.table("settings").upsert({"key": key, "value": value}, pk="key")

    # -- cache: manifests, tags, blobs, repositories ---------------------------------------------

    def config_version(self) -> int:
        """The configuration's version: moved by every change to rules, credential sets, upstreams, settings or
        client tokens, and by every link removed (triggers, m013), by any process; what cached checks are kept for."""
        return self.conn.execute("SELECT version FROM config_version WHERE id = 1").fetchall()[0][0]

    def config_version_nowait(self) -> int | None:
        """:meth:`config_version` through a connection of its own that never waits for a lock (None when it
        would have to): one read of a one-row table, cheap enough for an event loop (~4 us, where a worker-thread
        hop costs ~100 us). Call it from one thread only."""
        if self._version_conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 0")
                conn.execute("PRAGMA query_only = 1")
            except sqlite3.Error:
                return None
            self._version_conn = conn
        try:  # fetchall: the statement completes, so no read transaction is left open
            return self._version_conn.execute("SELECT version FROM config_version WHERE id = 1").fetchall()[0][0]
        except sqlite3.OperationalError:  # busy (another connection recovers the WAL): ask the caller to wait
            return None

    def manifest(self, digest: str) -> tuple[str, bytes] | None:
        row = self.conn.execute("SELECT media_type, content FROM manifests WHERE digest = ?",
                                   [digest]).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def put_manifest(self, digest: str, media_type: str, content: bytes) -> None:
        now = _ts(utc_now())
        self.conn.execute(
            "INSERT OR IGNORE INTO manifests (digest, media_type, size, content, created_at, last_access) "
            "VALUES (?, ?, ?, ?, ?, ?)", [digest, media_type, len(content), content, now, now])

    def tag(self, repository: str, source: str, tag: str) -> tuple[str, datetime] | None:
        """The digest ``source`` gave ``repository:tag`` and when it last confirmed it."""
        row = self.conn.execute("SELECT digest, validated_at FROM tags WHERE repository = ? AND source = ? AND tag = ?",
                                [repository, source, tag]).fetchone()
        return (row[0], _required_dt(row[1], "tags.validated_at", f"{repository}:{tag}")) if row else None

    def set_tag(self, repository: str, source: str, tag: str, digest: str, when: datetime | None = None) -> None:
        now = _ts(when or utc_now())
        self.conn.execute(
            "INSERT INTO tags (repository, source, tag, digest, fetched_at, validated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (repository, source, tag) DO UPDATE SET validated_at = excluded.validated_at, "
            "fetched_at = CASE WHEN tags.digest = excluded.digest THEN tags.fetched_at ELSE excluded.fetched_at END, "
            "digest = excluded.digest", [repository, source, tag, digest, now, now])

    def tags(self, repository: str, source: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT tag FROM tags WHERE repository = ? AND source = ? "
                                                "ORDER BY tag", [repository, source])]

    def set_referrers(self, repository: str, source: str, subject: str, referrers: str) -> None:
        """What ``source`` said refers to ``subject`` (JSON descriptors), replacing what it said before."""
        self.conn.execute(
            "INSERT INTO referrers (repository, source, subject, referrers, fetched_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (repository, source, subject) DO UPDATE SET referrers = excluded.referrers, "
            "fetched_at = excluded.fetched_at", [repository, source, subject, referrers, _ts(utc_now())])

    def referrers(self, repository: str, source: str, subject: str) -> str | None:
        """The referrers ``source`` last listed for ``subject`` (JSON), or None if it never answered."""
        row = self.conn.execute("SELECT referrers FROM referrers WHERE repository = ? AND source = ? AND subject = ?",
                                [repository, source, subject]).fetchone()
        return row[0] if row else None

    def link(self, repository: str, source: str, digest: str, kind: str, media_type: str | None = None) -> None:
        """``source`` showed it has ``digest`` (a manifest of ``media_type``, or a blob)."""
        self.conn.execute(
            "INSERT INTO repository_contents (repository, source, digest, kind, media_type) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (repository, source, digest) DO UPDATE SET media_type = "
            "COALESCE(excluded.media_type, repository_contents.media_type)",
            [repository, source, digest, kind, media_type])

    def linked(self, repository: str, source: str, digest: str) -> tuple[str, str | None] | None:
        """(kind, media type) when ``source`` showed it has ``digest`` for ``repository``, else None."""
        row = self.conn.execute("SELECT kind, media_type FROM repository_contents WHERE repository = ? "
                                "AND source = ? AND digest = ?", [repository, source, digest]).fetchone()
        return (row[0], row[1]) if row else None

    def is_linked(self, repository: str, source: str, digest: str) -> bool:
        return self.linked(repository, source, digest) is not None

    def record_served(self, digest: str, login_server: str) -> None:
        """The upstream registry ``login_server`` served bytes that verified against ``digest``."""
        self.conn.execute("INSERT OR IGNORE INTO served_by (digest, login_server) VALUES (?, ?)",
                          [digest, login_server])

    def served(self, digest: str, login_server: str) -> bool:
        return self.conn.execute("SELECT 1 FROM served_by WHERE digest = ? AND login_server = ?",
                                 [digest, login_server]).fetchone() is not None

    def record_repository(self, name: str, rule: str, upstream: str, when: datetime | None = None, *,
                          pulls: int = 1, first: datetime | None = None) -> None:
        """``pulls`` pulls of ``name``, the last at ``when`` (now), the first at ``first`` (``when``)."""
        now = _ts(when or utc_now())
        self.conn.execute(
            "INSERT INTO repositories (name, rule, upstream, first_pull, last_pull, pulls) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET rule = excluded.rule, upstream = excluded.upstream, "
            "last_pull = MAX(COALESCE(repositories.last_pull, ''), excluded.last_pull), "
            "pulls = repositories.pulls + excluded.pulls",
            [name, rule, upstream, _ts(first) if first else now, now, pulls])

    def repository_names(self, last: str | None = None, limit: int | None = None) -> list[str]:
        sql = "SELECT name FROM repositories WHERE name > ? ORDER BY name"
        args: list = [last or ""]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [r[0] for r in self.conn.execute(sql, args)]

    def blob(self, digest: str) -> tuple[int, str] | None:
        """Size and path (relative to the state directory) of a stored blob."""
        row = self.conn.execute("SELECT size, path FROM blobs WHERE digest = ?", [digest]).fetchone()
        return (row[0], row[1]) if row else None

    def put_blob(self, digest: str, size: int, path: str, when: datetime | None = None) -> None:
        # full precision: eviction orders blobs by when they were last pulled
        now = _ts(when or datetime.now(timezone.utc))
        self.conn.execute(
            "INSERT INTO blobs (digest, size, path, first_access, last_access) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (digest) DO UPDATE SET size = excluded.size, path = excluded.path, "
            "last_access = excluded.last_access", [digest, size, path, now, now])

    def touch_blob(self, digest: str, when: datetime | None = None) -> None:
        """``digest`` was pulled at ``when`` (now); an earlier time never replaces a later one."""
        at = _ts(when or datetime.now(timezone.utc))
        self.conn.execute("UPDATE blobs SET last_access = ? WHERE digest = ? AND "
                          "(last_access IS NULL OR last_access < ?)", [at, digest, at])

    def delete_blob(self, digest: str, *, unless_accessed_since: datetime | None = None) -> bool:
        """Forget a blob; with ``unless_accessed_since`` (its last access when eviction chose it) only if
        nothing pulled or stored it again meanwhile. Whether a row was deleted."""
        if unless_accessed_since is None:
            cursor = self.conn.execute("DELETE FROM blobs WHERE digest = ?", [digest])
        else:
            cursor = self.conn.execute("DELETE FROM blobs WHERE digest = ? AND last_access IS ?",
                                          [digest, _ts(unless_accessed_since)])
        return cursor.rowcount > 0

    def repository_pulls(self) -> list[tuple[str, str, datetime | None]]:
        """(repository, rule, last pull) of every cached repository."""
        return [(name, rule, _dt(last or first)) for name, rule, first, last in self.conn.execute(
            "SELECT name, rule, first_pull, last_pull FROM repositories")]

    def blob_usage(self) -> dict[str, tuple[int, str, datetime | None, list[str]]]:
        """Per stored blob: size, path, last access, and the repositories that contain it."""
        usage: dict[str, tuple[int, str, datetime | None, list[str]]] = {}
        for digest, size, path, last_access in self.conn.execute(
                "SELECT digest, size, path, last_access FROM blobs"):
            usage[digest] = (size, path, _dt(last_access), [])
        for repository, digest in self.conn.execute(
                "SELECT DISTINCT repository, digest FROM repository_contents WHERE kind = 'blob'"):
            if digest in usage:
                usage[digest][3].append(repository)
        return usage

    # -- purge: what an operator removes from the cache by hand ----------------------------------------

    def is_cached_repository(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM repositories WHERE name = ?", [name]).fetchone() is not None

    def tagged(self, repository: str) -> list[tuple[str, str]]:
        """(tag, digest) of every tag of ``repository``, from any source, by tag."""
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT DISTINCT tag, digest FROM tags WHERE repository = ? ORDER BY tag, digest", [repository])]

    def linked_digests(self, repository: str, kind: str | None = None) -> list[str]:
        """The digests ``repository`` links (manifests and blobs, or only ``kind``), from any source."""
        sql = "SELECT DISTINCT digest FROM repository_contents WHERE repository = ?"
        args = [repository]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        return [r[0] for r in self.conn.execute(sql + " ORDER BY digest", args)]

    def tag_sources(self, repository: str, *, tag: str | None = None,
                    digest: str | None = None) -> list[tuple[str, str]]:
        """(source, tag) of the tags of ``repository`` (only those named ``tag`` or pointing at ``digest``)."""
        sql, args = "SELECT DISTINCT source, tag FROM tags WHERE repository = ?", [repository]
        if tag is not None:
            sql, args = sql + " AND tag = ?", [*args, tag]
        if digest is not None:
            sql, args = sql + " AND digest = ?", [*args, digest]
        return [(r[0], r[1]) for r in self.conn.execute(sql + " ORDER BY source, tag", args)]

    def link_sources(self, repository: str, digests: Iterable[str]) -> list[tuple[str, str]]:
        """(source, digest) of what ``repository`` links among ``digests``."""
        found: list[tuple[str, str]] = []
        for digest in digests:
            found += [(r[0], digest) for r in self.conn.execute(
                "SELECT source FROM repository_contents WHERE repository = ? AND digest = ? ORDER BY source",
                [repository, digest])]
        return found

    def delete_tags(self, repository: str, *, tag: str | None = None, digest: str | None = None) -> list[str]:
        """Remove the tags of ``repository`` named ``tag`` or pointing at ``digest`` (every source's); the
        names of the tags removed."""
        column, value = ("tag", tag) if tag is not None else ("digest", digest)
        removed = [r[0] for r in self.conn.execute(
            f"SELECT DISTINCT tag FROM tags WHERE repository = ? AND {column} = ? ORDER BY tag", [repository, value])]
        self.conn.execute(f"DELETE FROM tags WHERE repository = ? AND {column} = ?", [repository, value])
        return removed

    def unlink(self, repository: str, digests: Iterable[str]) -> None:
        """``repository`` no longer has ``digests`` (for any source), nor the referrers listed for them; a
        manifest no repository links any more is dropped."""
        for digest in digests:
            self.conn.execute("DELETE FROM repository_contents WHERE repository = ? AND digest = ?",
                              [repository, digest])
            self.conn.execute("DELETE FROM referrers WHERE repository = ? AND subject = ?", [repository, digest])
        self.conn.execute("DELETE FROM manifests WHERE digest NOT IN "
                          "(SELECT digest FROM repository_contents WHERE kind = 'manifest')")

    def unlinked_blobs(self, digests: Iterable[str]) -> list[tuple[str, int, str, datetime | None]]:
        """(digest, size, path, last access) of the stored blobs among ``digests`` that no repository links."""
        found = []
        for digest in digests:
            row = self.conn.execute(
                "SELECT digest, size, path, last_access FROM blobs WHERE digest = ? AND NOT EXISTS "
                "(SELECT 1 FROM repository_contents WHERE digest = ?)", [digest, digest]).fetchone()
            if row:
                found.append((row[0], row[1], row[2], _dt(row[3])))
        return found

    def forget_repository(self, name: str) -> None:
        """Drop a repository's tags, links and record (retention expired); manifests nobody links go too."""
        self.conn.execute("DELETE FROM tags WHERE repository = ?", [name])
        self.conn.execute("DELETE FROM referrers WHERE repository = ?", [name])
        self.conn.execute("DELETE FROM repository_contents WHERE repository = ?", [name])
        self.conn.execute("DELETE FROM repositories WHERE name = ?", [name])
        self.conn.execute("DELETE FROM manifests WHERE digest NOT IN "
                             "(SELECT digest FROM repository_contents WHERE kind = 'manifest')")

    def delete_setting(self, key: str) -> bool:
        existed = self.setting(key) is not None
        self.conn.execute("DELETE FROM settings WHERE key = ?", [key])
        return existed

    # -- events ------------------------------------------------------------------------------------

    EVENT_COLUMNS = ("ts", "client", "method", "kind", "repository", "reference", "rule", "result", "status",
                     "bytes", "duration_ms", "detail", "user_agent")

    #: a batch of events as one JSON array of rows, one statement: executemany steps once per row, and Python's
    #: sqlite3 lets go of the GIL and takes it back around every step; on the writer's worker thread beside a busy
    #: event loop each row then waited for a GIL hand-off (25,600 rows beside a thread that holds the GIL: 61 s
    #: by executemany, 1.4 s as one statement), and every hand-off cost the loop a context switch
    _INSERT_EVENTS_JSON = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT "
                           + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(EVENT_COLUMNS)))
                           + " FROM json_each(?) ORDER BY key")

    def insert_events(self, events: list[dict]) -> None:
        cols = self.EVENT_COLUMNS
        rows = [[e.get(c) for c in cols] for e in events]
        if not rows:
            return
        if self._json_rows:
            try:
                self.conn.execute(self._INSERT_EVENTS_JSON, [json.dumps(rows, allow_nan=False)])
                return
            except sqlite3.OperationalError as exc:  # an SQLite built without its JSON functions
                if "no such function" not in str(exc) and "no such table" not in str(exc):
                    raise
                self._json_rows = False
        self.conn.executemany(f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)

    def events(self, after_id: int = 0, limit: int = 1000) -> list[dict]:
        cur = self.conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", [after_id, limit])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def event_id_range(self) -> tuple[int, int]:
        """(lowest, highest) id of the events kept; (0, 0) when there are none."""
        low, high = self.conn.execute("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM events").fetchone()
        return low, high

    def last_event_id_before(self, when: datetime) -> int:
        """The highest id below which every event was recorded before ``when``: the id just below the first one
        (in id order) recorded at or after it; the highest id when every event is older, 0 when none is.

        Not the id of the oldest young event by time: processes sharing the database (the TUI's proxy, `serve`)
        write their batches when they can, so a later id may carry an earlier time, and everything below such
        an id is not old. The scan goes in id order and stops at the first young event: it reads the old
        events only, which the run then prunes."""
        row = self.conn.execute("SELECT id FROM events NOT INDEXED WHERE ts >= ? ORDER BY id LIMIT 1",
                                [_ts(when)]).fetchone()
        return row[0] - 1 if row else self.last_event_id()

    def fold_events(self, through_id: int, limit: int) -> int:
        """Remove up to ``limit`` of the oldest events with ids up to ``through_id``, adding them to the
        roll-ups first (in one transaction), so the statistics read the same afterwards; how many went."""
        with self.transaction():
            low = self.conn.execute("SELECT MIN(id) FROM events").fetchone()[0]
            if low is None or low > through_id:
                return 0
            last = min(through_id, low + limit - 1)  # ids are dense below the newest: an id range is a batch
            self.conn.execute(
                "INSERT INTO event_rollups (rule, repository, result, requests, bytes, bytes_fetched) "
                "SELECT COALESCE(rule, ''), CASE WHEN result IN ('hit', 'miss') THEN COALESCE(repository, '') "
                "ELSE '' END, result, COUNT(*), COALESCE(SUM(bytes), 0), "
                "COALESCE(SUM(CASE WHEN kind = 'blob' AND result = 'miss' AND (detail IS NULL OR detail NOT IN (?, ?)) "
                "THEN bytes ELSE 0 END), 0) "
                "FROM events WHERE id BETWEEN ? AND ? GROUP BY 1, 2, 3 "
                "ON CONFLICT (rule, repository, result) DO UPDATE SET "
                "requests = requests + excluded.requests, bytes = bytes + excluded.bytes, "
                "bytes_fetched = bytes_fetched + excluded.bytes_fetched", [*NOT_FETCHED_HERE, low, last])
            return self.conn.execute("DELETE FROM events WHERE id BETWEEN ? AND ?", [low, last]).rowcount

    # -- statistics ----------------------------------------------------------------------------------

    def cache_size(self) -> tuple[int, int, int]:
        """(bytes of blobs, number of blobs, number of manifests)."""
        blob_bytes, blobs = self.conn.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM blobs").fetchone()
        manifests = self.conn.execute("SELECT COUNT(*) FROM manifests").fetchone()[0]
        return blob_bytes, blobs, manifests

    def event_totals(self) -> dict[str, int]:
        """Counts per result, bytes served to clients and bytes fetched from upstreams (blob misses)."""
        totals = {"hit": 0, "miss": 0, "stale": 0, "error": 0, "bytes_served": 0, "bytes_fetched": 0}
        for result, count, size in self.conn.execute(  # the events kept, and the roll-ups of those pruned
                "SELECT result, SUM(n), SUM(b) FROM (SELECT result, COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b "
                "FROM events GROUP BY result UNION ALL SELECT result, requests, bytes FROM event_rollups) "
                "GROUP BY result"):
            totals[result] = count
            if result != "error":
                totals["bytes_served"] += size
        totals["bytes_fetched"] = self.conn.execute(  # a request that joined a download fetched nothing more
            "SELECT COALESCE(SUM(bytes), 0) FROM events WHERE kind = 'blob' AND result = 'miss' "
            "AND (detail IS NULL OR detail NOT IN (?, ?))", list(NOT_FETCHED_HERE)).fetchone()[0] + self.conn.execute(
            "SELECT COALESCE(SUM(bytes_fetched), 0) FROM event_rollups").fetchone()[0]
        return totals

    def event_minutes(self, since: datetime) -> list[tuple[str, int, int, int, int, int]]:
        """Per minute since ``since`` (UTC) with any event: (``YYYY-MM-DDTHH:MM``, requests, hits (stale
        included), answered requests, bytes served, bytes fetched upstream), oldest first; read through the
        ``ts`` index, so an hour costs the same however long the log is."""
        return [tuple(row) for row in self.conn.execute(
            "SELECT substr(ts, 1, 16), COUNT(*), COALESCE(SUM(result IN ('hit', 'stale')), 0), "
            "COALESCE(SUM(result != 'error'), 0), COALESCE(SUM(CASE WHEN result != 'error' THEN bytes END), 0), "
            "COALESCE(SUM(CASE WHEN kind = 'blob' AND result = 'miss' AND (detail IS NULL OR detail NOT IN (?, ?)) "
            "THEN bytes END), 0) FROM events WHERE ts >= ? GROUP BY 1 ORDER BY 1",
            [*NOT_FETCHED_HERE, _ts(since)])]

    def rule_sizes(self) -> dict[str, int]:
        """Per rule: bytes of the blobs its repositories hold (a blob shared by two rules counts in each)."""
        return dict(self.conn.execute(
            "SELECT rule, SUM(size) FROM (SELECT DISTINCT r.rule, b.digest, b.size FROM repositories r "
            "JOIN repository_contents c ON c.repository = r.name AND c.kind = 'blob' "
            "JOIN blobs b ON b.digest = c.digest) GROUP BY rule"))

    def rule_usage(self) -> dict[str, tuple[int, int, int]]:
        """Per rule: (cached repositories, hits, misses)."""
        usage: dict[str, list[int]] = {}
        for rule, repos in self.conn.execute("SELECT rule, COUNT(*) FROM repositories GROUP BY rule"):
            usage.setdefault(rule, [0, 0, 0])[0] = repos
        for rule, result, count in self.conn.execute(
                "SELECT rule, result, SUM(n) FROM (SELECT rule, result, COUNT(*) AS n FROM events "
                "WHERE rule IS NOT NULL AND result IN ('hit', 'miss') GROUP BY rule, result UNION ALL "
                "SELECT rule, result, requests FROM event_rollups WHERE rule != '' AND result IN ('hit', 'miss')) "
                "GROUP BY rule, result"):
            usage.setdefault(rule, [0, 0, 0])[1 if result == "hit" else 2] = count
        return {rule: (v[0], v[1], v[2]) for rule, v in usage.items()}

    def rule_repositories(self, rule: str) -> list[dict]:
        """The repositories a rule cached: tags, stored bytes, pulls, last pull, hits and misses."""
        rows = []
        for name, upstream, last_pull, pulls in self.conn.execute(
                "SELECT name, upstream, last_pull, pulls FROM repositories WHERE rule = ? ORDER BY name", [rule]):
            tags = [r[0] for r in self.conn.execute(
                "SELECT DISTINCT tag FROM tags WHERE repository = ? ORDER BY tag", [name])]
            size = self.conn.execute(
                "SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (SELECT c.digest FROM "
                "repository_contents c WHERE c.repository = ? AND c.kind = 'blob')", [name]).fetchone()[0]
            hits, misses = self.conn.execute(
                "SELECT COALESCE(SUM(result = 'hit'), 0), COALESCE(SUM(result = 'miss'), 0) FROM events "
                "WHERE repository = ?", [name]).fetchone()
            for result, count in self.conn.execute(  # pruned events, rolled up
                    "SELECT result, SUM(requests) FROM event_rollups WHERE repository = ? AND result IN "
                    "('hit', 'miss') GROUP BY result", [name]):
                hits, misses = (hits + count, misses) if result == "hit" else (hits, misses + count)
            rows.append({"name": name, "upstream": upstream, "tags": tags, "size": size, "pulls": pulls,
                         "last_pull": _dt(last_pull), "hits": hits, "misses": misses})
        return rows

    def last_event_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def recent_errors(self, limit: int = 5) -> list[dict]:
        cur = self.conn.execute("SELECT * FROM events WHERE result = 'error' ORDER BY id DESC LIMIT ?", [limit])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    # -- tag sync ----------------------------------------------------------------------------------------

    def repositories_of_rule(self, rule: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM repositories WHERE rule = ? ORDER BY name",
                                                   [rule])]

    def record_tag_sync(self, rule: str, repository: str, result: str, fetched: int, detail: str) -> None:
        self.conn.execute(
            "INSERT INTO tag_syncs (rule, repository, synced_at, result, fetched, detail) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (rule, repository) DO UPDATE SET synced_at = excluded.synced_at, "
            "result = excluded.result, fetched = excluded.fetched, detail = excluded.detail",
            [rule, repository, _ts(utc_now()), result, fetched, detail])

    def tag_syncs(self, rule: str | None = None) -> list[TagSyncRecord]:
        sql = ("SELECT rule, repository, synced_at, result, fetched, detail FROM tag_syncs"
               + (" WHERE rule = ?" if rule else "") + " ORDER BY rule, repository")
        return [TagSyncRecord(r, repository, _dt(synced_at), result, fetched or 0, detail or "")
                for r, repository, synced_at, result, fetched, detail
                in self.conn.execute(sql, [rule] if rule else [])]

    # -- rate limits ---------------------------------------------------------------------------------

    def record_rate_limit(self, login_server: str, identity: str, limit: str | None, remaining: str | None,
                          throttled: int) -> None:
        self.conn.execute(
            "INSERT INTO rate_limits (login_server, identity, limit_value, remaining, throttled, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (login_server, identity) DO UPDATE SET "
            "limit_value = excluded.limit_value, remaining = excluded.remaining, "
            "throttled = rate_limits.throttled + excluded.throttled, updated_at = excluded.updated_at",
            [login_server, identity, limit, remaining, throttled, _ts(utc_now())])

    def rate_limits(self) -> list[RateLimitRecord]:
        cur = self.conn.execute("SELECT login_server, identity, limit_value, remaining, throttled, updated_at "
                                   "FROM rate_limits ORDER BY login_server, identity")
        return [RateLimitRecord(server, identity, limit, remaining, throttled or 0, _dt(updated_at))
                for server, identity, limit, remaining, throttled, updated_at in cur]

    # -- client tokens -------------------------------------------------------------------------------

    _TOKEN_COLUMNS = "name, repositories, password_hash, created_at, expires_at, last_used"

    @staticmethod
    def _client_token(row: tuple) -> ClientToken:
        name, repositories, password_hash, created_at, expires_at, last_used = row
        return ClientToken(name, tuple(json.loads(repositories)), password_hash, _dt(created_at), _dt(expires_at),
                           _dt(last_used))

    def client_tokens(self) -> list[ClientToken]:
        return [self._client_token(r) for r in self.conn.execute(
            f"SELECT {self._TOKEN_COLUMNS} FROM client_tokens ORDER BY created_at, rowid")]

    def client_token(self, name: str) -> ClientToken | None:
        row = self.conn.execute(f"SELECT {self._TOKEN_COLUMNS} FROM client_tokens WHERE name = ?",
                                   [name]).fetchone()
        return self._client_token(row) if row else None

    def has_client_tokens(self) -> bool:
        return self.conn.execute("SELECT 1 FROM client_tokens LIMIT 1").fetchone() is not None

    def insert_client_token(self, token: ClientToken) -> None:
        self.conn.execute(
            f"INSERT INTO client_tokens ({self._TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            [token.name, json.dumps(list(token.repositories)), token.password_hash, _ts(token.created_at),
             _ts(token.expires_at), _ts(token.last_used)])

    def delete_client_token(self, name: str) -> None:
        self.conn.execute("DELETE FROM client_tokens WHERE name = ?", [name])

    def touch_client_token(self, name: str, when: datetime) -> None:
        """Record when a token was last used (the proxy calls this lazily, not on every request)."""
        self.conn.execute("UPDATE client_tokens SET last_used = ? WHERE name = ?", [_ts(when), name])


class AsyncStateStore:
    """A StateStore for async code: each call runs on a worker thread, one at a time.

    SQLite calls block, so they never run on the event loop; the limiter of one keeps the single
    connection's statements (and transactions) from interleaving.
    """

    def __init__(self, store: StateStore) -> None:
        import anyio

        self.store = store
        self._limiter = anyio.CapacityLimiter(1)

    async def run(self, fn: Callable[[StateStore, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(store, *args)`` on a worker thread and return its result.

        ``fn`` is typically a lambda (``run(lambda s: s.tags(repo))``) or an unbound method with its
        arguments (``run(StateStore.tag, repo, tag)``); either way the result keeps ``fn``'s type."""
        import anyio

        return await anyio.to_thread.run_sync(lambda: fn(self.store, *args), limiter=self._limiter)

    async def config_version(self) -> int:
        """The configuration version (:meth:`StateStore.config_version`): the one read in
        :meth:`one_version_check` while inside it, else a new reading, on the event loop unless it would wait."""
        pinned = _CONFIG_VERSION.get()
        return pinned if pinned is not None else await self._read_config_version()

    async def _read_config_version(self) -> int:
        version = self.store.config_version_nowait()
        return version if version is not None else await self.run(lambda s: s.config_version())

    @asynccontextmanager
    async def one_version_check(self) -> AsyncIterator[None]:
        """Within the block (one request), every "did the configuration change?" check reuses one reading,
        taken when the block starts: what the request is allowed is decided against one configuration."""
        token = _CONFIG_VERSION.set(await self._read_config_version())
        try:
            yield
        finally:
            _CONFIG_VERSION.reset(token)


#: the configuration version read for the current request (a task's context), see AsyncStateStore.one_version_check
_CONFIG_VERSION: ContextVar[int | None] = ContextVar("regcache_config_version", default=None)
