"""Schema migrations: appended functions, applied once each, in order, never edited afterwards.

To change the schema, append a new ``@migration`` function at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: importing sqlite-utils is left to the stores that write
    from sqlite_utils import Database

Migration = Callable[["Database"], None]

#: Every migration in the order it is applied; the function name is its identity.
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_configuration(db: Database) -> None:
    """What an operator configures: upstreams, credential sets, cache rules, settings."""
    db.table("upstreams").create(
        {
            "login_server": str,
            "base_url": str,
            # NULL for an override of a built-in entry (the built-in policy stays)
            "auth_policy": str,
            "kind": str,  # "custom" or "override"
            "created_at": str,
        },
        pk="login_server",
        not_null={"base_url", "kind", "created_at"},
    )
    db.table("credential_sets").create(
        {
            "name": str,
            "login_server": str,
            "username_secret_id": str,
            "password_secret_id": str,
            "health_status": str,
            "health_error_code": str,
            "health_message": str,
            "health_checked_at": str,
            "created_at": str,
        },
        pk="name",
        not_null={"login_server", "username_secret_id", "password_secret_id", "health_status", "created_at"},
    )
    db.table("cache_rules").create(
        {
            "name": str,
            "source_repository": str,
            "target_repository": str,
            "credential_set": str,
            "created_at": str,
        },
        pk="name",
        not_null={"source_repository", "target_repository", "created_at"},
        foreign_keys=[("credential_set", "credential_sets", "name")],
    )
    # Static targets are unique and wildcard targets never overlap, so no two rules share a target.
    db.table("cache_rules").create_index(["target_repository"], unique=True)
    db.table("settings").create({"key": str, "value": str}, pk="key")


@migration
def m002_cache(db: Database) -> None:
    """What the proxy caches and records: manifests, tags, blobs, repositories, pull events."""
    db.table("manifests").create(
        {"digest": str, "media_type": str, "size": int, "content": bytes, "created_at": str,
         "last_access": str},
        pk="digest",
        not_null={"media_type", "size", "content", "created_at"},
    )
    db.table("repositories").create(
        {"name": str, "rule": str, "upstream": str, "first_pull": str, "last_pull": str, "pulls": int},
        pk="name",
        not_null={"upstream", "first_pull"},
    )
    # tag -> digest per (client-side) repository, with when the upstream last confirmed it
    db.table("tags").create(
        {"repository": str, "tag": str, "digest": str, "fetched_at": str, "validated_at": str},
        pk=("repository", "tag"),
        not_null={"digest", "fetched_at", "validated_at"},
    )
    # manifests and blobs a repository has been shown to contain (upstream confirmed)
    db.table("repository_contents").create(
        {"repository": str, "digest": str, "kind": str},
        pk=("repository", "digest"),
    )
    db.table("blobs").create(
        {"digest": str, "size": int, "path": str, "first_access": str, "last_access": str},
        pk="digest",
        not_null={"size", "path", "first_access"},
    )
    db.table("events").create(
        {
            "id": int, "ts": str, "client": str, "method": str, "kind": str, "repository": str,
            "reference": str, "rule": str, "result": str, "status": int, "bytes": int,
            "duration_ms": float, "detail": str,
        },
        pk="id",
        not_null={"ts", "kind", "result"},
    )
    db.table("events").create_index(["ts"])


@migration
def m003_rule_settings(db: Database) -> None:
    """Per-rule freshness window, stale-serving policies and retention (operations beyond ACR)."""
    table = db.table("cache_rules")
    table.add_column("freshness_seconds", float)
    table.add_column("serve_stale_on_error", int, not_null_default=1)
    table.add_column("serve_stale_if_deleted", int, not_null_default=0)
    table.add_column("retention_seconds", float)


@migration
def m004_tag_sync_and_rate_limits(db: Database) -> None:
    """Tag sync per rule (filter, interval, last result) and upstream rate-limit budgets."""
    table = db.table("cache_rules")
    table.add_column("sync_tags", str)  # a regex, or a semver range such as ">=1.2,<2"
    table.add_column("sync_interval_seconds", float)
    db.table("tag_syncs").create(
        {"rule": str, "repository": str, "synced_at": str, "result": str, "fetched": int, "detail": str},
        pk=("rule", "repository"),
    )
    # the last ratelimit-limit / ratelimit-remaining an upstream sent, per credential set or anonymous
    db.table("rate_limits").create(
        {"login_server": str, "identity": str, "limit_value": str, "remaining": str, "throttled": int,
         "updated_at": str},
        pk=("login_server", "identity"),
    )


@migration
def m005_client_tokens(db: Database) -> None:
    """Repository-scoped client tokens (ACR tokens and scope maps): a salted password hash, never the password."""
    db.table("client_tokens").create(
        {
            "name": str,
            "repositories": str,  # a JSON list of patterns in the target grammar: "ubuntu", "team/*", "*"
            "password_hash": str,  # scrypt$N$R$P$SALT$HASH
            "expires_at": str,
            "created_at": str,
            "last_used": str,
        },
        pk="name",
        not_null={"repositories", "password_hash", "created_at"},
    )


@migration
def m006_tags_and_links_per_source(db: Database) -> None:
    """Tags and repository links belong to the source that established them (docs/security.md).

    A source is the upstream repository and the access used to reach it; the tags and links stored
    before were keyed by the client-side name only and may hold what another source established, so
    they are dropped (the next pull establishes them again; verified manifests and blobs stay). Links
    keep the media type their source's content gave the manifest. ``served_by`` records which upstream
    registry served which verified bytes: only such a registry's HEAD counts as proof for another source.
    """
    db.execute("DROP TABLE tags")
    db.execute("DROP TABLE repository_contents")
    db.table("tags").create(
        {"repository": str, "source": str, "tag": str, "digest": str, "fetched_at": str, "validated_at": str},
        pk=("repository", "source", "tag"),
        not_null={"digest", "fetched_at", "validated_at"},
    )
    db.table("repository_contents").create(
        {"repository": str, "source": str, "digest": str, "kind": str, "media_type": str},
        pk=("repository", "source", "digest"),
    )
    db.table("repository_contents").create_index(["digest"])
    db.table("served_by").create({"digest": str, "login_server": str}, pk=("digest", "login_server"))


@migration
def m007_upstream_allowed_origins(db: Database) -> None:
    """Origins an operator allows an upstream's redirects and token realms to reach (a JSON list).

    Besides the upstream's own origin, only these may be on a loopback, link-local or private address,
    and only these may receive the credential set as a token realm (regcache.proxy.upstream.policy).
    """
    db.table("upstreams").add_column("allowed_origins", str, not_null_default="[]")


@migration
def m008_event_rollups(db: Database) -> None:
    """Counters of pruned pull events, so the statistics outlive the events (events-max-age, events-max-count).

    Pruned events are added to one row per rule, repository and result: the Overview's totals and each
    rule's and repository's hits and misses read these rows plus the events still kept. The repository is
    kept for hits and misses only (what per-repository figures read); '' stands for none.
    """
    db.table("event_rollups").create(
        {"rule": str, "repository": str, "result": str, "requests": int, "bytes": int, "bytes_fetched": int},
        pk=("rule", "repository", "result"),
        not_null={"rule", "repository", "result", "requests", "bytes", "bytes_fetched"},
        defaults={"requests": 0, "bytes": 0, "bytes_fetched": 0},
    )
    db.table("event_rollups").create_index(["repository"])  # a repository's hits and misses


@migration
def m009_referrers(db: Database) -> None:
    """Referrers per source: what a subject's referrers were when its upstream last answered (served stale
    while the upstream is down, like tags). ``referrers`` is a JSON list of checked descriptors."""
    db.table("referrers").create(
        {"repository": str, "source": str, "subject": str, "referrers": str, "fetched_at": str},
        pk=("repository", "source", "subject"),
        not_null={"referrers", "fetched_at"},
    )


@migration
def m010_event_user_agent(db: Database) -> None:
    """The client's User-Agent with each pull event (cut to USER_AGENT_MAX_CHARS): the Activity log names the
    client's tool (docker, podman, skopeo, ...). The roll-ups of pruned events do not keep it."""
    db.table("events").add_column("user_agent", str)


@migration
def m011_credential_health(db: Database) -> None:
    """A credential set's health is the last real upstream login, written only by the engine when an upstream
    accepts or refuses a login. Before, whoever looked wrote it: a ``credential-set show`` in a shell without
    the ``env://`` variables stored SecretNotFound, a read of the secrets stored Healthy. Only a refusal by the
    upstream (UpstreamAuthFailed) is known to be a login result; every other recorded health becomes Unknown
    until the next login (an authenticated pull, or ``credential-set show --check``)."""
    db.execute("UPDATE credential_sets SET health_status = 'Unknown', health_error_code = NULL, "
               "health_message = NULL, health_checked_at = NULL "
               "WHERE health_error_code IS NULL OR health_error_code != 'UpstreamAuthFailed'")


@migration
def m012_upstream_ca_bundle(db: Database) -> None:
    """The CA bundle an upstream names (the path of a PEM file; NULL: the operating system's trust store only).

    Only the path is stored: the file is read when the upstream is added and at every configuration reload
    (regcache.proxy.upstream.tls).
    """
    db.table("upstreams").add_column("ca_bundle", str)


#: the tables whose every change moves the configuration version (m013): what a request's checks read
CONFIG_TABLES = ("cache_rules", "credential_sets", "upstreams", "settings")


@migration
def m013_config_version(db: Database) -> None:
    """One counter, moved by triggers in the same transaction as every change it covers, whichever process
    or version of regcache makes it: rules, credential sets, upstreams and settings (any change), client
    tokens (any change but ``last_used``), and links removed or given another media type (a purge, retention).

    The proxy keeps what it read for one version (rules, tokens, links, manifests it served) and reads this
    row at every request, cheaply: a change takes effect on the very next request. SQLite's own
    ``PRAGMA data_version`` moved with every write of any other connection (each event flush of another
    process), which made every request reload. A later migration that rebuilds one of these tables (a
    sqlite-utils ``transform``) drops its triggers and must create them again.
    """
    db.execute("CREATE TABLE config_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
    db.execute("INSERT INTO config_version (id, version) VALUES (1, 1)")
    bump = "BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END"
    for table in CONFIG_TABLES:
        for event in ("INSERT", "UPDATE", "DELETE"):
            db.execute(f"CREATE TRIGGER {table}_{event.lower()}_config_version AFTER {event} ON {table} {bump}")
    for event in ("INSERT", "UPDATE OF name, repositories, password_hash, created_at, expires_at", "DELETE"):
        name = event.split()[0].lower()
        db.execute(f"CREATE TRIGGER client_tokens_{name}_config_version AFTER {event} ON client_tokens {bump}")
    db.execute(f"CREATE TRIGGER repository_contents_delete_config_version AFTER DELETE ON repository_contents "
               f"{bump}")
    db.execute(f"CREATE TRIGGER repository_contents_update_config_version AFTER UPDATE OF media_type ON "
               f"repository_contents WHEN OLD.media_type IS NOT NEW.media_type {bump}")
