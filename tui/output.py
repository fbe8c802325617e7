"""How CLI reads are printed: ARM-shaped records rendered as a table, JSON or TSV (like ``az -o``).

Cells are data, printed as text: control and bidi characters are escaped (``\x1b``) in tables and TSV,
and JSON escapes them itself (``\u001b``); nothing is read as markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from regcache.proxy.core.models import CacheRule, CredentialSet, RateLimitRecord, Upstream
from regcache.proxy.core.settings import S3Storage, StorageConfig
from regcache.proxy.core.text import printable
from regcache.proxy.core.tokens import ClientToken
from regcache.proxy.core.units import format_duration

FORMATS = ("table", "json", "tsv")

Column = tuple[str, str]  # (header, key of the ARM record)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def rule_resource(rule: CacheRule) -> dict[str, Any]:
    """A cache rule in ``az acr cache show`` shape."""
    return {
        "name": rule.name,
        "id": f"cacheRules/{rule.name}",
        "type": "regcache/cacheRules",
        "sourceRepository": rule.source_repository,
        "targetRepository": rule.target_repository,
        "credentialSetResourceId": f"credentialSets/{rule.credential_set}" if rule.credential_set else None,
        "creationDate": _iso(rule.created_at),
        "provisioningState": "Succeeded",
        # beyond ACR
        "freshness": format_duration(rule.freshness or 0),
        "retention": format_duration(rule.retention),
        "serveStaleOnError": rule.serve_stale_on_error,
        "serveStaleIfDeleted": rule.serve_stale_if_deleted,
        "syncTags": rule.sync_tags,
        "syncInterval": format_duration(rule.sync_interval) if rule.sync_interval else
        ("1h" if rule.sync_tags else None),
    }


RULE_COLUMNS: Sequence[Column] = (
    ("NAME", "name"), ("SOURCE REPOSITORY", "sourceRepository"), ("TARGET REPOSITORY", "targetRepository"),
    ("CREDENTIAL SET", "credentialSetResourceId"), ("CREATED", "creationDate"),
)


def rate_limit_resource(record: RateLimitRecord | None) -> dict[str, Any] | None:
    """The last budget an upstream announced (its ``ratelimit-*`` headers) and the 429s counted."""
    if record is None:
        return None
    return {"limit": record.limit, "remaining": record.remaining, "throttled": record.throttled,
            "updatedAt": record.updated_at.isoformat() if record.updated_at else None}


def credential_set_resource(cs: CredentialSet, rate_limit: RateLimitRecord | None = None) -> dict[str, Any]:
    """A credential set in ``az acr credential-set show`` shape: secret ids only, never values."""
    return {
        "name": cs.name,
        "id": f"credentialSets/{cs.name}",
        "type": "regcache/credentialSets",
        "loginServer": cs.login_server,
        "authCredentials": [{
            "name": "Credential1",
            "usernameSecretIdentifier": cs.username_secret_id,
            "passwordSecretIdentifier": cs.password_secret_id,
            "credentialHealth": {
                "status": cs.health.status.value,
                "errorCode": cs.health.error_code,
                "errorMessage": cs.health.message,
                "checkedAt": _iso(cs.health.checked_at),
            },
        }],
        "creationDate": _iso(cs.created_at),
        "provisioningState": "Succeeded",
        "rateLimit": rate_limit_resource(rate_limit),
    }


CREDENTIAL_SET_COLUMNS: Sequence[Column] = (
    ("NAME", "name"), ("LOGIN SERVER", "loginServer"), ("HEALTH", "health"), ("ERROR", "errorCode"),
    ("CREATED", "creationDate"),
)


def upstream_resource(upstream: Upstream, rate_limit: RateLimitRecord | None = None) -> dict[str, Any]:
    """An upstream; ``rateLimit`` is the budget of anonymous pulls from it."""
    return {
        "loginServer": upstream.login_server,
        "url": upstream.base_url,
        "authPolicy": upstream.auth_policy.value,
        "builtIn": upstream.builtin,
        "defaultUrl": upstream.default_url,
        "title": upstream.title,
        "allowedOrigins": list(upstream.allowed_origins),
        "caBundle": upstream.ca_bundle,
        "rateLimit": rate_limit_resource(rate_limit),
    }


UPSTREAM_COLUMNS: Sequence[Column] = (
    ("LOGIN SERVER", "loginServer"), ("URL", "url"), ("AUTH", "authPolicy"), ("KIND", "kind"),
    ("ALLOWED ORIGINS", "allowedOrigins"), ("CA BUNDLE", "caBundle"),
)


def _cell(record: Mapping[str, Any], key: str) -> str:
    if key in record:
        value = record[key]
    elif key in ("health", "errorCode"):  # flattened from the one authCredentials entry
        health = record["authCredentials"][0]["credentialHealth"]
        value = health["status"] if key == "health" else health["errorCode"]
    elif key == "kind":
        value = ("built-in, URL overridden" if record["defaultUrl"] else "built-in") if record["builtIn"] else "custom"
    else:
        value = None
    if key == "credentialSetResourceId" and value:
        value = value.rpartition("/")[2]
    if isinstance(value, list):  # e.g. a token's repositories
        value = ",".join(str(v) for v in value)
    return "" if value is None else printable(value)


def render(data: Mapping[str, Any] | Sequence[Mapping[str, Any]], columns: Sequence[Column], fmt: str) -> str:
    """Render one record or a list of records in ``fmt`` (table, json or tsv)."""
    if fmt == "json":
        return json.dumps(data, indent=2)  # ensure_ascii: control and bidi characters become \uXXXX
    records = [data] if isinstance(data, Mapping) else list(data)
    rows = [[_cell(r, key) for _, key in columns] for r in records]
    if fmt == "tsv":
        return "\n".join("\t".join(row) for row in rows)
    headers = [h for h, _ in columns]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


# -- client tokens ---------------------------------------------------------------------------------

def token_resource(token: ClientToken) -> dict[str, Any]:
    """A client token in the spirit of ``az acr token show``: its scope and dates, never a secret."""
    return {
        "name": token.name,
        "id": f"tokens/{token.name}",
        "type": "regcache/tokens",
        "repositories": list(token.repositories),
        "status": token.status,
        "expiry": _iso(token.expires_at),
        "creationDate": _iso(token.created_at),
        "lastUsed": _iso(token.last_used),
        "provisioningState": "Succeeded",
    }


TOKEN_COLUMNS: Sequence[Column] = (
    ("NAME", "name"), ("REPOSITORIES", "repositories"), ("STATUS", "status"), ("EXPIRY", "expiry"),
    ("CREATED", "creationDate"), ("LAST USED", "lastUsed"),
)


# -- storage backend -------------------------------------------------------------------------------

def storage_resource(config: StorageConfig) -> dict[str, Any]:
    """The storage backend: where blobs live and the *ids* of the bucket's secrets, never their values."""
    if not isinstance(config, S3Storage):
        return {"kind": config.kind}
    return {
        "kind": config.kind,
        "endpoint": config.endpoint,
        "bucket": config.bucket,
        "region": config.region,
        "addressing": "path" if config.path_style else "virtual",
        "prefix": config.prefix,
        "accessKeyIdSecretIdentifier": config.access_key_id,
        "secretAccessKeySecretIdentifier": config.secret_access_key,
    }


#: (label, key of the storage record), for the table and TSV forms (one line per setting)
STORAGE_FIELDS: Sequence[Column] = (
    ("kind", "kind"), ("endpoint", "endpoint"), ("bucket", "bucket"), ("region", "region"),
    ("addressing", "addressing"), ("prefix", "prefix"), ("access-key-id", "accessKeyIdSecretIdentifier"),
    ("secret-access-key", "secretAccessKeySecretIdentifier"),
)
