"""Declarative configuration: a reviewed YAML file of upstreams, credential sets and cache rules.

``export_document`` writes the current configuration; ``plan_document`` compares a document with
it; ``apply_document`` makes the configuration equal to the document in one transaction (every
change or none). Secret values never appear in the file: credential sets carry secret ids only.

A rules file may come from anywhere, so reading one is bounded: at most ``rules-file-max-size`` bytes
of UTF-8, nested no deeper than a rules file needs, without YAML anchors or aliases (no "billion
laughs"), every value plain text. A plan shows every change the file would make, secret ids included
(ids only, never values), so a reviewer sees a credential set pointed at another secret.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, BinaryIO

import yaml

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.catalogue import normalize_allowed_origins, normalize_base_url, normalize_login_server
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import AuthPolicy, CacheRule, CredentialSet, Upstream
from regcache.proxy.core.secret_ids import SecretId
from regcache.proxy.core.settings import (
    DEFAULT_RULES_FILE_MAX_SIZE,
    RULES_FILE_MAX_SIZE_SETTING,
    parse_rule_settings,
)
from regcache.proxy.core.text import check_printable
from regcache.proxy.core.units import format_duration, format_size

HEADER = "# regcache configuration: apply with `regcache rules apply -f FILE` (dry run), then `--yes`\n"

RULE_KEYS = {"name", "sourceRepository", "targetRepository", "credentialSet", "freshness", "retention",
             "serveStaleOnError", "serveStaleIfDeleted", "syncTags", "syncInterval"}
SET_KEYS = {"name", "loginServer", "usernameSecretId", "passwordSecretId"}
UPSTREAM_KEYS = {"loginServer", "url", "authPolicy", "allowedOrigins", "caBundle"}
#: a rules file nests four levels (document, section, entry, value); anything deeper is refused unbuilt
MAX_DEPTH = 8


def _origins_change(old: tuple[str, ...], new: tuple[str, ...]) -> str:
    return f"allowed origins {', '.join(old) or 'none'} -> {', '.join(new) or 'none'}"


def _bundle_change(old: str | None, new: str | None) -> str:
    return f"CA bundle {old or 'none'} -> {new or 'none'}"


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
        if rule.sync_interval:  # an interval is tag sync's: kept from before `--sync-tags none`, it means nothing
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
        if u.ca_bundle:
            upstreams[-1]["caBundle"] = u.ca_bundle
    doc = {
        "upstreams": upstreams,
        "credentialSets": [{"name": cs.name, "loginServer": cs.login_server,
                            "usernameSecretId": cs.username_secret_id, "passwordSecretId": cs.password_secret_id}
                           for cs in control.list_credential_sets()],
        "cacheRules": [_rule_doc(r) for r in control.list_rules()],
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


# -- read and parse -----------------------------------------------------------------------------------

def rules_file_max_size(control: ControlPlane) -> int:
    """The largest rules file this cache reads, in bytes (the ``rules-file-max-size`` setting)."""
    raw = control.store.setting(RULES_FILE_MAX_SIZE_SETTING)
    return int(float(raw)) if raw else DEFAULT_RULES_FILE_MAX_SIZE


def _too_large(max_size: int) -> ValidationError:
    return ValidationError(f"the rules file is larger than {format_size(max_size)}, the limit of the setting "
                           f"{RULES_FILE_MAX_SIZE_SETTING} (raise it with `regcache settings set "
                           f"{RULES_FILE_MAX_SIZE_SETTING} SIZE` if the file is meant to be this large)",
                           field="file")


def decode_rules_file(data: bytes, max_size: int) -> str:
    """The text of a rules file's bytes: refused when over ``max_size``, binary or not UTF-8."""
    if len(data) > max_size:
        raise _too_large(max_size)
    if b"\0" in data:
        raise ValidationError("the rules file is binary (it contains NUL bytes); give a YAML file as "
                              "`regcache rules export` writes it", field="file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"the rules file is not UTF-8 text (byte {exc.start + 1} cannot be decoded); "
                              f"give a YAML file as `regcache rules export` writes it", field="file") from None


def read_rules_file(control: ControlPlane, stream: BinaryIO) -> str:
    """Read a rules file from ``stream``, never more than the limit and one byte."""
    max_size = rules_file_max_size(control)
    return decode_rules_file(stream.read(max_size + 1), max_size)


def _where(event: yaml.Event) -> str:
    mark = getattr(event, "start_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def _load_yaml(text: str) -> Any:
    """Parse YAML in bounded time and memory: its events are checked before a single object is built."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: fast on large files
    try:
        depth = 0
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ValidationError(f"the rules file uses a YAML anchor or alias{_where(event)}; write each "
                                      f"value out (rules files take no anchors, aliases or merge keys)")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ValidationError(f"the rules file nests lists or mappings more than {MAX_DEPTH} deep"
                                          f"{_where(event)}; a rules file needs four levels")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return yaml.load(text, Loader=loader)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # libyaml puts the end of a file without a final line break on the line after it
        where = f" at line {min(mark.line + 1, text.count(chr(10)) + 1)}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise ValidationError(f"the rules file is not valid YAML{where}" + (f": {problem[:200]}" if problem else "")
                              ) from None
    except (ValueError, RecursionError, OverflowError):  # e.g. an integer of more than 4,300 digits
        raise ValidationError("the rules file holds a value that cannot be read (a number too long?)") from None


def _check_keys(mapping: dict, where: str, keys: set[str], what: str = "key") -> None:
    """Keys are plain text from ``keys``; an unknown one is named (it is known to be printable by then)."""
    for key in mapping:
        if not isinstance(key, str):
            raise ValidationError(f"{where} has a {what} that is not text ({type(key).__name__}); "
                                  f"known: {', '.join(sorted(keys))}")
        check_printable(key, None, f"a {what} of {where}", max_length=64)
    unknown = set(mapping) - keys
    if unknown:
        raise ValidationError(f"{where} has unknown {what}(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(keys))}")


def _entries(doc: dict, section: str, keys: set[str], required: set[str]) -> list[dict]:
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise ValidationError(f"{section} must be a list")
    for i, entry in enumerate(entries):
        where = f"{section}[{i}]"
        if not isinstance(entry, dict):
            raise ValidationError(f"{where} must be a mapping of {', '.join(sorted(keys))}")
        _check_keys(entry, where, keys)
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
            else:
                check_printable(value, key, f"{where}.{key}")
    names = Counter(e.get("name") or e.get("loginServer") for e in entries)
    duplicates = sorted(name for name, count in names.items() if count > 1)
    if duplicates:
        raise ValidationError(f"{section} names {', '.join(duplicates)} more than once")
    return entries


def parse_document(text: str) -> dict[str, list[dict]]:
    """A rules file's sections, each entry checked for its keys and plain-text values."""
    doc = _load_yaml(text) or {}
    if not isinstance(doc, dict):
        raise ValidationError("the rules file must be a mapping with upstreams, credentialSets and cacheRules")
    _check_keys(doc, "the rules file", {"upstreams", "credentialSets", "cacheRules"}, "section")
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
    settings: dict[str, Any] = dict(_DEFAULT_SETTINGS)
    settings.update(parse_rule_settings({_SETTING_KEYS[k]: v for k, v in entry.items() if k in _SETTING_KEYS}))
    return settings


# -- plan and apply -----------------------------------------------------------------------------------

#: the settings a plan shows, as (label, key of _rule_settings), in the order of `regcache cache create`
_SHOWN_SETTINGS = (("freshness", "freshness"), ("retention", "retention"),
                   ("serve stale on error", "serve_stale_on_error"),
                   ("serve stale if deleted", "serve_stale_if_deleted"), ("sync tags", "sync_tags"),
                   ("sync interval", "sync_interval"))
_DEFAULT_SETTINGS = {"freshness": None, "retention": None, "serve_stale_on_error": True,
                     "serve_stale_if_deleted": False, "sync_tags": None, "sync_interval": None}


def _setting(rule_or_settings: CacheRule | dict[str, Any], key: str) -> Any:
    """A setting as a plan compares it: a freshness of 0 is the default, none; so is a sync interval while
    tag sync is off (the export leaves it out)."""
    def get(name: str) -> Any:
        return rule_or_settings[name] if isinstance(rule_or_settings, dict) else getattr(rule_or_settings, name)

    if key == "sync_interval" and not get("sync_tags"):
        return None
    return (get(key) or None) if key == "freshness" else get(key)


def _shown(key: str, value: Any) -> Any:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return format_duration(value) if key in ("freshness", "retention", "sync_interval") else value


def _differences(rule: CacheRule, entry: dict) -> list[str]:
    settings = _rule_settings(entry)
    diffs = []
    if entry.get("credentialSet") != rule.credential_set:
        diffs.append(f"credential set {_shown('', rule.credential_set)} -> {_shown('', entry.get('credentialSet'))}")
    for label, key in _SHOWN_SETTINGS:
        current, wanted = _setting(rule, key), _setting(settings, key)
        if current != wanted:
            diffs.append(f"{label} {_shown(key, current)} -> {_shown(key, wanted)}")
    return diffs


def _new_rule(entry: dict) -> str:
    """A rule the file creates: its mapping, its access and the settings it does not leave at the default."""
    parts = [f"{entry['targetRepository']} => {entry['sourceRepository']}"]
    if entry.get("credentialSet"):
        parts.append(f"credential set {entry['credentialSet']}")
    settings = _rule_settings(entry)
    parts += [f"{label} {_shown(key, settings[key])}" for label, key in _SHOWN_SETTINGS
              if _setting(settings, key) != _DEFAULT_SETTINGS[key]]
    return "; ".join(parts)


def _secret_id(entry: dict, key: str, where: str) -> str:
    return str(SecretId.parse(entry[key], field=f"{where}.{key}"))


def _run(control: ControlPlane, doc: dict[str, list[dict]], execute: bool) -> list[Change]:
    changes: list[Change] = []
    upstreams = {u.login_server: u for u in control.list_upstreams()}
    sets = {cs.name: cs for cs in control.list_credential_sets()}
    rules = {r.name: r for r in control.list_rules()}

    # upstreams first: credential sets and rules refer to them
    wanted_upstreams = {normalize_login_server(e["loginServer"]): e for e in doc["upstreams"]}
    for server, entry in wanted_upstreams.items():
        current: Upstream | None = upstreams.get(server)
        url = normalize_base_url(entry["url"])
        origins = normalize_allowed_origins(entry.get("allowedOrigins") or [], url)
        policy = AuthPolicy.parse(entry["authPolicy"], field="authPolicy") if "authPolicy" in entry else None
        # checked now, so a plan shows a missing or broken file before anything is applied
        bundle = control.check_ca_bundle(entry["caBundle"]) if entry.get("caBundle") else None
        bundle_diff = [_bundle_change(current.ca_bundle, bundle)] if current and current.ca_bundle != bundle else []
        if current is not None and current.builtin:
            if policy is not None and policy is not current.auth_policy:
                raise ValidationError(f"{server} is built in with the auth policy {current.auth_policy.value!r}; "
                                      f"a rules file can override only its url, allowed origins and CA bundle",
                                      field="authPolicy")
            # a built-in left as it is keeps its known realm hosts unless the file names allowed origins for it
            origins_changed = current.allowed_origins != origins and (current.overridden or "allowedOrigins" in entry
                                                                      or current.base_url != url)
            if current.base_url == url and not origins_changed and not bundle_diff:
                continue
            diffs = ([f"url {current.base_url} -> {url}"] if current.base_url != url else []) + (
                [_origins_change(current.allowed_origins, origins)] if origins_changed else []) + bundle_diff
            changes.append(Change("~" if current.overridden else "+", "upstream", server, "; ".join(diffs)))
            if execute:
                control.add_upstream(server, url, None, origins, bundle)
            continue
        policy = policy or AuthPolicy.BOTH
        if current is None:
            changes.append(Change("+", "upstream", server, f"{url}; auth policy {policy.value}" + (
                f"; allowed origins {', '.join(origins)}" if origins else "") + (
                f"; CA bundle {bundle}" if bundle else "")))
        else:
            diffs = ([f"url {current.base_url} -> {url}"] if current.base_url != url else []) + (
                [f"auth policy {current.auth_policy.value} -> {policy.value}"] if current.auth_policy != policy
                else []) + ([_origins_change(current.allowed_origins, origins)]
                            if current.allowed_origins != origins else []) + bundle_diff
            if not diffs:
                continue
            changes.append(Change("~", "upstream", server, "; ".join(diffs)))
        if execute:
            control.add_upstream(server, url, policy.value, origins, bundle)

    # credential sets: create or change secret ids (shown old -> new: ids only, never values)
    for i, entry in enumerate(doc["credentialSets"]):
        where = f"credentialSets[{i}]"
        username, password = _secret_id(entry, "usernameSecretId", where), _secret_id(entry, "passwordSecretId", where)
        cs: CredentialSet | None = sets.get(entry["name"])
        if cs is None:
            changes.append(Change("+", "credential set", entry["name"],
                                  f"{normalize_login_server(entry['loginServer'])}; username secret id {username}; "
                                  f"password secret id {password}"))
            if execute:
                control.create_credential_set(entry["name"], entry["loginServer"], username, password)
            continue
        if cs.login_server != normalize_login_server(entry["loginServer"]):
            raise ValidationError(f"credential set {cs.name!r} is for {cs.login_server}; a login server cannot "
                                  f"change: give the new one another name")
        diffs = [f"{label} secret id {old} -> {new}" for label, old, new in
                 (("username", cs.username_secret_id, username), ("password", cs.password_secret_id, password))
                 if old != new]
        if diffs:
            users = control.store.rules_using_credential_set(cs.name)
            if users:  # a new access: those rules establish their tags and links again (docs/security.md)
                diffs.append(f"a new access for cache rule(s) {', '.join(users)}")
            changes.append(Change("~", "credential set", cs.name, "; ".join(diffs)))
            if execute:
                control.update_credential_set(cs.name, username, password)

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
        changes.append(Change("+", "cache rule", name, _new_rule(entry)))
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


def _document(control: ControlPlane, text: str | bytes) -> dict[str, list[dict]]:
    """A rules file's text (or bytes, decoded here) parsed, within this cache's size limit."""
    max_size = rules_file_max_size(control)
    if isinstance(text, bytes):
        text = decode_rules_file(text, max_size)
    elif len(text) > max_size or len(text.encode("utf-8", "surrogatepass")) > max_size:
        raise _too_large(max_size)
    return parse_document(text)


def plan_document(control: ControlPlane, text: str | bytes) -> list[Change]:
    """What applying ``text`` would change, checked by applying it in a transaction rolled back."""
    doc = _document(control, text)
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


def apply_document(control: ControlPlane, text: str | bytes) -> list[Change]:
    """Make the configuration equal to ``text``: every change in one transaction, or none."""
    doc = _document(control, text)
    with control.store.transaction():
        return _run(control, doc, execute=True)
