"""Declarative configuration: a reviewed YAML file of upstreams, credential sets and cache rules.

``export_document`` writes the current configuration; ``plan_document`` compares a document with
it; ``apply_document`` makes the configuration equal to the document in one transaction (every
change or none). Secret values never appear in the file: credential sets carry secret ids only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.catalogue import normalize_allowed_origins, normalize_base_url
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import CacheRule, CredentialSet, Upstream
from regcache.proxy.core.settings import parse_rule_settings
from regcache.proxy.core.units import format_duration

HEADER = "# regcache configuration: apply with `regcache rules apply -f FILE` (dry run), then `--yes`\n"

RULE_KEYS = {"name", "sourceRepository", "targetRepository", "credentialSet", "freshness", "retention",
             "serveStaleOnError", "serveStaleIfDeleted", "syncTags", "syncInterval"}
SET_KEYS = {"name", "loginServer", "usernameSecretId", "passwordSecretId"}
UPSTREAM_KEYS = {"loginServer", "url", "authPolicy", "allowedOrigins"}


@dataclass(frozen=True, slots=True)
class Change:
    """One line of a plan: ``+`` create, ``~`` update, ``-`` delete."""

    op: str
    kind: str  # "upstream", "credential set", "cache rule"
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.op} {self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")


# -- export -----------------------------------------------------------------------------------------

def _rule_doc(rule: CacheRule) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": rule.name, "sourceRepository": rule.source_repository,
                           "targetRepository": rule.target_repository}
    if rule.credential_set:
        doc["credentialSet"] = rule.credential_set
    if rule.freshness:
        doc["freshness"] = format_duration(rule.freshness)
    if rule.retention:
        doc["retention"] = format_duration(rule.retention)
    if not rule.serve_stale_on_error:
        doc["serveStaleOnError"] = False
    if rule.serve_stale_if_deleted:
        doc["serveStaleIfDeleted"] = True
    if rule.sync_tags:
        doc["syncTags"] = rule.sync_tags
    if rule.sync_interval:
        doc["syncInterval"] = format_duration(rule.sync_interval)
    return doc


def export_document(control: ControlPlane) -> str:
    """The configuration as YAML (built-in upstreams only where their URL is overridden)."""
    upstreams: list[dict[str, Any]] = []
    for u in control.list_upstreams():
        if not u.builtin:
            upstreams.append({"loginServer": u.login_server, "url": u.base_url, "authPolicy": u.auth_policy.value})
        elif u.overridden:
            upstreams.append({"loginServer": u.login_server, "url": u.base_url})
        else:
            continue
        if u.allowed_origins:
            upstreams[-1]["allowedOrigins"] = list(u.allowed_origins)
    doc = {
        "upstreams": upstreams,
        "credentialSets": [{"name": cs.name, "loginServer": cs.login_server,
                            "usernameSecretId": cs.username_secret_id, "passwordSecretId": cs.password_secret_id}
                           for cs in control.list_credential_sets()],
        "cacheRules": [_rule_doc(r) for r in control.list_rules()],
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


# -- parse --------------------------------------------------------------------------------------------

def _entries(doc: dict, section: str, keys: set[str], required: set[str]) -> list[dict]:
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise ValidationError(f"{section} must be a list")
    for i, entry in enumerate(entries):
        where = f"{section}[{i}]"
        if not isinstance(entry, dict):
            raise ValidationError(f"{where} must be a mapping of {', '.join(sorted(keys))}")
        unknown = set(entry) - keys
        if unknown:
            raise ValidationError(f"{where} has unknown key(s) {', '.join(sorted(unknown))}; "
                                  f"known: {', '.join(sorted(keys))}")
        missing = required - set(entry)
        if missing:
            raise ValidationError(f"{where} is missing {', '.join(sorted(missing))}")
        for key, value in entry.items():
            if key.startswith("serveStale"):
                if not isinstance(value, bool):
                    raise ValidationError(f"{where}.{key} must be true or false")
            elif key == "allowedOrigins":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValidationError(f"{where}.{key} must be a list of origins (scheme://host:port)")
            elif not isinstance(value, str):
                raise ValidationError(f"{where}.{key} must be a string")
    names = [e.get("name") or e.get("loginServer") for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValidationError(f"{section} names {', '.join(duplicates)} more than once")
    return entries


def parse_document(text: str) -> dict[str, list[dict]]:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValidationError(f"the rules file is not valid YAML{where}") from None
    if not isinstance(doc, dict):
        raise ValidationError("the rules file must be a mapping with upstreams, credentialSets and cacheRules")
    unknown = set(doc) - {"upstreams", "credentialSets", "cacheRules"}
    if unknown:
        raise ValidationError(f"unknown section(s) {', '.join(sorted(unknown))}; "
                              f"known: upstreams, credentialSets, cacheRules")
    return {
        "upstreams": _entries(doc, "upstreams", UPSTREAM_KEYS, {"loginServer", "url"}),
        "credentialSets": _entries(doc, "credentialSets", SET_KEYS, SET_KEYS),
        "cacheRules": _entries(doc, "cacheRules", RULE_KEYS, {"name", "sourceRepository", "targetRepository"}),
    }


#: a rules file's setting keys -> the engine's
_SETTING_KEYS = {"freshness": "freshness", "retention": "retention", "serveStaleOnError": "serve_stale_on_error",
                 "serveStaleIfDeleted": "serve_stale_if_deleted", "syncTags": "sync_tags",
                 "syncInterval": "sync_interval"}


def _rule_settings(entry: dict) -> dict[str, Any]:
    """The rule's settings as the file wants them: what it leaves out is the default."""
    settings: dict[str, Any] = {"freshness": None, "retention": None, "serve_stale_on_error": True,
                                "serve_stale_if_deleted": False, "sync_tags": None, "sync_interval": None}
    settings.update(parse_rule_settings({_SETTING_KEYS[k]: v for k, v in entry.items() if k in _SETTING_KEYS}))
    return settings


# -- plan and apply -----------------------------------------------------------------------------------

def _differences(rule: CacheRule, entry: dict) -> list[str]:
    settings = _rule_settings(entry)
    wanted = {"credential set": entry.get("credentialSet"), "freshness": settings["freshness"] or None,
              "retention": settings["retention"], "serve stale on error": settings["serve_stale_on_error"],
              "serve stale if deleted": settings["serve_stale_if_deleted"], "sync tags": settings["sync_tags"],
              "sync interval": settings["sync_interval"]}
    current = {"credential set": rule.credential_set, "freshness": rule.freshness or None,
               "retention": rule.retention, "serve stale on error": rule.serve_stale_on_error,
               "serve stale if deleted": rule.serve_stale_if_deleted, "sync tags": rule.sync_tags,
               "sync interval": rule.sync_interval}
    def shown(key: str, value: Any) -> Any:
        durations = ("freshness", "retention", "sync interval")
        return format_duration(value) if key in durations and value is not None else value

    return [f"{k} {shown(k, current[k])} -> {shown(k, wanted[k])}" for k in wanted if wanted[k] != current[k]]


def _run(control: ControlPlane, doc: dict[str, list[dict]], execute: bool) -> list[Change]:
    changes: list[Change] = []
    upstreams = {u.login_server: u for u in control.list_upstreams()}
    sets = {cs.name: cs for cs in control.list_credential_sets()}
    rules = {r.name: r for r in control.list_rules()}

    # upstreams first: credential sets and rules refer to them
    wanted_upstreams = {e["loginServer"].strip().lower(): e for e in doc["upstreams"]}
    for server, entry in wanted_upstreams.items():
        current: Upstream | None = upstreams.get(server)
        url = normalize_base_url(entry["url"])
        origins = normalize_allowed_origins(entry.get("allowedOrigins") or [], url)
        # a built-in left as it is keeps its known realm hosts unless the file names allowed origins for it
        origins_changed = current is not None and current.allowed_origins != origins and (
            not current.builtin or current.overridden or "allowedOrigins" in entry)
        if current is None or current.base_url != url or origins_changed or (
                not current.builtin and current.auth_policy.value != entry.get("authPolicy", "both")):
            shown = entry["url"] + (f" (allowed origins: {', '.join(origins) or 'none'})" if origins_changed or (
                current is None and origins) else "")
            changes.append(Change("+" if current is None or (current.builtin and not current.overridden) else "~",
                                  "upstream", server, shown))
            if execute:
                control.add_upstream(server, entry["url"], None if current is not None and current.builtin
                                     else entry.get("authPolicy"), origins)

    # credential sets: create or change secret ids
    for entry in doc["credentialSets"]:
        cs: CredentialSet | None = sets.get(entry["name"])
        if cs is None:
            changes.append(Change("+", "credential set", entry["name"], entry["loginServer"]))
            if execute:
                control.create_credential_set(entry["name"], entry["loginServer"], entry["usernameSecretId"],
                                              entry["passwordSecretId"])
        elif cs.login_server != entry["loginServer"].strip().lower():
            raise ValidationError(f"credential set {cs.name!r} is for {cs.login_server}; a login server cannot "
                                  f"change: give the new one another name")
        elif (cs.username_secret_id, cs.password_secret_id) != (entry["usernameSecretId"],
                                                                entry["passwordSecretId"]):
            changes.append(Change("~", "credential set", cs.name, "secret ids"))
            if execute:
                control.update_credential_set(cs.name, entry["usernameSecretId"], entry["passwordSecretId"])

    # rules: delete the gone and the re-pointed first (their targets become free), then update, create
    wanted_rules = {e["name"]: e for e in doc["cacheRules"]}
    for name, rule in rules.items():
        wanted = wanted_rules.get(name)
        moved = wanted is not None and (wanted["sourceRepository"], wanted["targetRepository"]) != (
            rule.source_repository, rule.target_repository)
        if wanted is None or moved:
            changes.append(Change("-", "cache rule", name, f"{rule.target_repository} => {rule.source_repository}"))
            if execute:
                control.delete_rule(name)
    for name, entry in wanted_rules.items():
        existing = rules.get(name)
        if existing is not None and (entry["sourceRepository"], entry["targetRepository"]) == (
                existing.source_repository, existing.target_repository):
            diffs = _differences(existing, entry)
            if diffs:
                changes.append(Change("~", "cache rule", name, "; ".join(diffs)))
                if execute:
                    cred = entry.get("credentialSet")
                    control.update_rule(name, cred,
                                        remove_credential_set=cred is None and bool(existing.credential_set),
                                        **_rule_settings(entry))
            continue
        changes.append(Change("+", "cache rule", name, f"{entry['targetRepository']} => {entry['sourceRepository']}"))
        if execute:
            control.create_rule(name, entry["sourceRepository"], entry["targetRepository"],
                                entry.get("credentialSet"), **_rule_settings(entry))

    # last, what nothing refers to any more
    wanted_sets = {e["name"] for e in doc["credentialSets"]}
    for name in sets:
        if name not in wanted_sets:
            changes.append(Change("-", "credential set", name))
            if execute:
                control.delete_credential_set(name)
    for server, upstream in upstreams.items():
        if server not in wanted_upstreams and (not upstream.builtin or upstream.overridden):
            changes.append(Change("-", "upstream", server, "URL override" if upstream.builtin else "custom"))
            if execute:
                control.remove_upstream(server)
    return changes


def plan_document(control: ControlPlane, text: str) -> list[Change]:
    """What applying ``text`` would change, checked by applying it in a transaction rolled back."""
    doc = parse_document(text)
    plan = _run(control, doc, execute=False)

    class _DryRun(Exception):
        pass

    try:
        with control.store.transaction():
            _run(control, doc, execute=True)  # every engine check runs; nothing is kept
            raise _DryRun
    except _DryRun:
        pass
    return plan


def apply_document(control: ControlPlane, text: str) -> list[Change]:
    """Make the configuration equal to ``text``: every change in one transaction, or none."""
    doc = parse_document(text)
    with control.store.transaction():
        return _run(control, doc, execute=True)
