"""How CLI reads are printed: ARM-shaped records rendered as a table, JSON, YAML or TSV (like ``az -o``),
whole or as ``--query`` selected them.

Cells are data, printed as text: control and bidi characters are escaped (``\x1b``) in tables and TSV,
JSON escapes them itself (``\u001b``) and YAML too (``"\\e"``, every non-ASCII character written as an
escape); nothing is read as markup.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from regcache.proxy.core.models import CacheRule, CredentialSet, RateLimitRecord, Upstream
from regcache.proxy.core.settings import S3Storage, StorageConfig
from regcache.proxy.core.text import printable
from regcache.proxy.core.tokens import ClientToken
from regcache.proxy.core.units import format_count, format_duration, format_size

FORMATS = ("table", "json", "yaml", "tsv")

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
        # the interval of tag sync: none while tag sync is off (an interval kept from before is inert)
        "syncInterval": (format_duration(rule.sync_interval) if rule.sync_interval else "1h") if rule.sync_tags
        else None,
    }


RULE_COLUMNS: Sequence[Column] = (
    ("NAME", "name"), ("SOURCE REPOSITORY", "sourceRepository"), ("TARGET REPOSITORY", "targetRepository"),
    ("CREDENTIAL SET", "credentialSetResourceId"), ("CREATED", "creationDate"),
)


def rule_usage_resource(repositories: Sequence[Any]) -> dict[str, Any]:
    """What a rule has cached (from its CachedRepository records): ``usage`` in ``cache show``."""
    pulls = [r.last_pull for r in repositories if r.last_pull is not None]
    return {
        "repositories": len(repositories),
        "tags": sum(len(r.tags) for r in repositories),
        "size": sum(r.size for r in repositories),
        "hits": sum(r.hits for r in repositories),
        "misses": sum(r.misses for r in repositories),
        "lastPull": _iso(max(pulls)) if pulls else None,
    }


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def rule_details(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """``cache show`` as a table: one row per setting, labelled as the option that sets it, then the usage."""
    cred_set = record["credentialSetResourceId"]
    rows = [
        ("name", record["name"]), ("source-repo", record["sourceRepository"]),
        ("target-repo", record["targetRepository"]),
        ("cred-set", cred_set.rpartition("/")[2] if cred_set else "none"),
        ("created", record["creationDate"]),
        ("freshness", record["freshness"]), ("retention", record["retention"] or "none (keep)"),
        ("serve-stale", _on_off(record["serveStaleOnError"])),
        ("serve-stale-if-deleted", _on_off(record["serveStaleIfDeleted"])),
        ("sync-tags", record["syncTags"] or "none"),
        ("sync-interval", record["syncInterval"] or "-"),
    ]
    usage = record.get("usage")
    if usage is not None:
        rows += [
            ("repositories", format_count(usage["repositories"])), ("tags", format_count(usage["tags"])),
            ("size", format_size(usage["size"])), ("hits", format_count(usage["hits"])),
            ("misses", format_count(usage["misses"])), ("last-pull", usage["lastPull"] or "never"),
        ]
    return [{"setting": label, "value": value} for label, value in rows]


DETAIL_COLUMNS: Sequence[Column] = (("SETTING", "setting"), ("VALUE", "value"))


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
    return _text(value)


def _text(value: Any) -> str:
    """A cell: a scalar as JSON would spell it (``true``, not ``True``; none is empty), a list of scalars
    comma-separated (a token's repositories), a nested object empty (as az); escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value if not isinstance(v, (list, dict)))
    if isinstance(value, dict):
        return ""
    return printable(value)


def render_document(data: Any, fmt: str) -> str:
    """``data`` whole as JSON or YAML (``fmt``), escaped as the module says."""
    if fmt == "json":
        return json.dumps(data, indent=2)  # ensure_ascii: control and bidi characters become \uXXXX
    import yaml

    # safe_dump: plain data only; allow_unicode off: every non-ASCII or control character is an escape; no
    # line folding, so a long URL stays on its line
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=False, default_flow_style=False,
                          width=2**31 - 1).rstrip("\n")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def render(data: Mapping[str, Any] | Sequence[Mapping[str, Any]], columns: Sequence[Column], fmt: str) -> str:
    """Render one record or a list of records in ``fmt`` (table, json, yaml or tsv)."""
    if fmt in ("json", "yaml"):
        return render_document(data, fmt)
    records = [data] if isinstance(data, Mapping) else list(data)
    rows = [[_cell(r, key) for _, key in columns] for r in records]
    if fmt == "tsv":
        return "\n".join("\t".join(row) for row in rows)
    return _table([h for h, _ in columns], rows)


def _flat(value: Any) -> bool:
    """A value a cell can show: a scalar or a list of scalars."""
    return not isinstance(value, dict) and not (isinstance(value, list)
                                                  and any(isinstance(v, (dict, list)) for v in value))


def _header(key: str) -> str:
    """``sourceRepository`` -> ``SOURCE REPOSITORY``: a query's keys as the tables' headers."""
    return printable(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).upper())


def render_result(value: Any, fmt: str) -> str:
    """What ``--query`` selected, in ``fmt``, as az prints it: JSON and YAML as they are; TSV a line per
    element, an object's values (or a list's elements) tab-separated and a scalar bare (``-o tsv`` of
    ``sourceRepository`` is just the repository); a table with an object's keys as headers, ``RESULT`` for
    scalars, ``COLUMN1``... for lists."""
    if fmt in ("json", "yaml"):
        return render_document(value, fmt)
    rows = value if isinstance(value, list) else [value]
    if fmt == "tsv":
        return "\n".join("\t".join(_text(v) for v in (row.values() if isinstance(row, dict) else row))
                         if isinstance(row, (dict, list)) else _text(row) for row in rows)
    if any(isinstance(row, dict) for row in rows):
        keys = [k for k in dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row)
                if any(isinstance(row, dict) and _flat(row.get(k)) for row in rows)]  # as az: nested ones left out
        return _table([_header(k) for k in keys],
                      [[_text(row.get(k)) if isinstance(row, dict) else "" for k in keys] for row in rows])
    if any(isinstance(row, list) for row in rows):
        width = max(len(row) for row in rows if isinstance(row, list))
        cells = [[_text(v) for v in row] + [""] * (width - len(row)) if isinstance(row, list)
                 else [_text(row)] + [""] * (width - 1) for row in rows]
        return _table([f"COLUMN{i + 1}" for i in range(width)], cells)
    return _table(["RESULT"], [[_text(row)] for row in rows])


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
