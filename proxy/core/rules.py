"""Cache-rule validation and matching: pure functions over rules, credential sets and upstreams.

Matching is a handful of dictionary look-ups (one per segment of the client's name), so it
stays in the microseconds at the 1,000-rule limit; validation of a new rule is linear in the
number of existing rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from regcache.proxy.core.catalogue import UpstreamCatalogue, normalize_repository_path
from regcache.proxy.core.errors import ConflictError, LimitError, NotFoundError, ValidationError
from regcache.proxy.core.models import AuthPolicy, CacheRule, CredentialSet, RuleMatch, UpstreamRepository
from regcache.proxy.core.references import repository_problem
from regcache.proxy.core.tagfilter import TagFilter
from regcache.proxy.core.text import check_printable

#: ACR's limit on cache rules per registry.
MAX_RULES = 1000

_NAME_RE = re.compile(r"[A-Za-z0-9-]{5,50}")


def check_name(name: str, kind: str = "cache rule") -> str:
    """A rule, credential-set or token name: 5 to 50 letters, digits and hyphens."""
    check_printable(name, "name", f"the {kind} name", max_length=None)
    if not 5 <= len(name) <= 50:
        quoted = f" {name!r}" if len(name) <= 50 else ""
        raise ValidationError(f"{kind} name{quoted} must be 5 to 50 characters long (it has {len(name):,})",
                              field="name")
    if not _NAME_RE.fullmatch(name):
        raise ValidationError(f"{kind} name {name!r} may contain only letters, digits and hyphens", field="name")
    return name


@dataclass(frozen=True, slots=True)
class _Side:
    """One side of a rule, parsed: the repository prefix and whether it ends in a wildcard."""

    prefix: str
    wildcard: bool


def parse_repository(value: str, what: str, field: str) -> _Side:
    """Parse a repository or ``PREFIX/*`` pattern; errors call it ``what`` and belong to ``field``."""
    check_printable(value, field, what)
    if value == "*":
        return _Side("", True)
    wildcard = value.endswith("/*")
    prefix = value[:-2] if wildcard else value
    if "*" in prefix:
        raise ValidationError(f"{what} {value!r}: '*' is allowed only as the whole last segment", field=field)
    if "@" in prefix:
        raise ValidationError(f"{what} {value!r} must not carry a digest; give the repository only", field=field)
    if ":" in prefix.rpartition("/")[2]:
        raise ValidationError(f"{what} {value!r} must not carry a tag; give the repository only", field=field)
    problem = repository_problem(prefix)
    if problem:
        raise ValidationError(f"{what} {value!r} {problem}", field=field)
    return _Side(prefix, wildcard)


def parse_target(target: str) -> _Side:
    """Parse a target repository: ``ubuntu``, ``team/*`` or ``*``."""
    return parse_repository(target.strip(), "target repository", "target")


def parse_source(source: str, catalogue: UpstreamCatalogue) -> tuple[str, _Side]:
    """Parse ``LOGIN_SERVER/PATH`` into the login server and path; Docker Hub paths gain ``library/``."""
    source = check_printable(source, "source", "the source repository").strip()
    server, slash, path = source.partition("/")
    if not slash or not path:
        raise ValidationError(
            f"source repository {source!r} must be LOGIN_SERVER/PATH, e.g. docker.io/library/ubuntu",
            field="source",
        )
    server = server.lower()
    try:
        catalogue.get(server)
    except NotFoundError as exc:
        raise ValidationError(exc.message, field="source") from None
    side = parse_repository(path, "source repository", "source")
    if not side.wildcard:
        side = _Side(normalize_repository_path(server, side.prefix), False)
    return server, side


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}/{rest}" if prefix and rest else prefix or rest


def _describe(rule: CacheRule) -> str:
    return f"'{rule.name}' ({rule.target_repository} => {rule.source_repository})"


def _wildcards_overlap(a: str, b: str) -> bool:
    """Two wildcard prefixes overlap when one is the other or an ancestor of it ("" is the root)."""
    return a == b or not a or not b or a.startswith(b + "/") or b.startswith(a + "/")


class RuleSet:
    """An immutable index of cache rules for matching client names to upstream repositories."""

    def __init__(self, rules: Iterable[CacheRule] = ()) -> None:
        self.rules: tuple[CacheRule, ...] = tuple(rules)
        self._by_name = {r.name: r for r in self.rules}
        self._static: dict[str, CacheRule] = {}
        self._wildcard: dict[str, CacheRule] = {}
        self._static_source: dict[str, CacheRule] = {}
        self._wildcard_source: dict[tuple[str, str], CacheRule] = {}
        for rule in sorted(self.rules, key=lambda r: r.created_at):
            if rule.is_wildcard:
                self._wildcard.setdefault(rule.target_prefix, rule)
                self._wildcard_source.setdefault((rule.source_login_server, rule.source_path), rule)
            else:
                self._static.setdefault(rule.target_repository, rule)
                self._static_source.setdefault(rule.source_repository, rule)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, name: str) -> CacheRule | None:
        return self._by_name.get(name)

    def static_rule_for(self, target: str) -> CacheRule | None:
        return self._static.get(target)

    def match(self, name: str) -> RuleMatch | None:
        """The rule serving client repository ``name``: a static target first, then the one wildcard."""
        rule = self._static.get(name)
        if rule is not None:
            return RuleMatch(rule, UpstreamRepository(rule.source_login_server, rule.source_path), name)
        wildcard = self._wildcard
        if not wildcard:
            return None
        # Walk the ancestors of `name`, longest first; wildcards never overlap, so at most one hits.
        end = len(name)
        while end > 0:
            end = name.rfind("/", 0, end)
            prefix = name[:end] if end > 0 else ""
            rule = wildcard.get(prefix)
            if rule is not None:
                rest = name[end + 1:] if end > 0 else name
                server = rule.source_login_server
                path = normalize_repository_path(server, _join(rule.source_path, rest))
                return RuleMatch(rule, UpstreamRepository(server, path), name)
        return None

    def match_source(self, login_server: str, name: str) -> RuleMatch | None:
        """Mirror mode (containerd's ``?ns=``): the rule whose *source* covers ``login_server/name``."""
        path = normalize_repository_path(login_server, name)
        rule = self._static_source.get(f"{login_server}/{path}")
        if rule is not None:
            return RuleMatch(rule, UpstreamRepository(login_server, path), rule.target_repository)
        end = len(path)
        while end > 0:
            end = path.rfind("/", 0, end)
            prefix = path[:end] if end > 0 else ""
            rule = self._wildcard_source.get((login_server, prefix))
            if rule is not None:
                rest = path[end + 1:] if end > 0 else path
                return RuleMatch(rule, UpstreamRepository(login_server, path), _join(rule.target_prefix, rest))
        return None


def check_credentials(
    source_login_server: str,
    credential_set: str | None,
    credential_sets: Mapping[str, CredentialSet],
    catalogue: UpstreamCatalogue,
) -> None:
    """Enforce the upstream's auth policy and that the credential set is for the source's login server."""
    upstream = catalogue.get(source_login_server)
    if credential_set is not None:
        check_printable(credential_set, "credential_set", "the credential set name")
    if credential_set is None:
        if upstream.auth_policy is AuthPolicy.CREDENTIALS:
            raise ValidationError(
                f"{source_login_server} supports {upstream.auth_policy.description}: attach a credential set "
                f"with -c NAME (create one with `regcache credential-set create -l {source_login_server}`)",
                field="credential_set",
            )
        return
    if upstream.auth_policy is AuthPolicy.ANONYMOUS:
        raise ValidationError(
            f"{source_login_server} supports {upstream.auth_policy.description}: "
            f"remove the credential set {credential_set!r}",
            field="credential_set",
        )
    found = credential_sets.get(credential_set)
    if found is None:
        raise ValidationError(f"credential set {credential_set!r} does not exist "
                              f"(see `regcache credential-set list`)", field="credential_set")
    if found.login_server != source_login_server:
        raise ValidationError(
            f"credential set {credential_set!r} is for {found.login_server}, "
            f"but the rule's source is on {source_login_server}",
            field="credential_set",
        )


def check_new_rule(
    rule: CacheRule,
    existing: RuleSet,
    credential_sets: Mapping[str, CredentialSet],
    catalogue: UpstreamCatalogue,
) -> CacheRule:
    """Validate ``rule`` against the existing rules; returns it normalised, or raises with a one-line reason."""
    check_name(rule.name)
    if existing.get(rule.name) is not None:
        raise ConflictError(f"a cache rule named {rule.name!r} already exists", field="name")
    if len(existing) >= MAX_RULES:
        raise LimitError(f"the cache-rule limit of {MAX_RULES:,} is reached; delete a rule before adding another",
                         field="name")
    server, source = parse_source(rule.source_repository, catalogue)
    target = parse_target(rule.target_repository)
    if source.wildcard != target.wildcard:
        raise ValidationError(
            f"target {rule.target_repository!r} and source {rule.source_repository!r}: a wildcard rule ends both "
            f"sides in '/*' (target '*' for a whole registry), a static rule neither",
            field="target",
        )
    normalized_source = f"{server}/{_join(source.prefix, '*') if source.wildcard else source.prefix}"
    normalized_target = _join(target.prefix, "*") if target.wildcard else target.prefix
    if target.wildcard:
        for other in existing.rules:
            if other.is_wildcard and _wildcards_overlap(target.prefix, other.target_prefix):
                raise ConflictError(
                    f"target {normalized_target!r} overlaps the wildcard rule {_describe(other)}; "
                    f"wildcard rules may not overlap",
                    field="target",
                )
    else:
        static = existing.static_rule_for(normalized_target)
        if static is not None:
            raise ConflictError(f"target {normalized_target!r} is already the target of rule {_describe(static)}",
                                field="target")
    check_credentials(server, rule.credential_set, credential_sets, catalogue)
    check_settings(rule)
    return replace(rule, source_repository=normalized_source, target_repository=normalized_target)


def check_settings(rule: CacheRule) -> None:
    """The per-rule operations settings: non-negative durations."""
    if rule.freshness is not None and rule.freshness < 0:
        raise ValidationError("the freshness window cannot be negative", field="freshness")
    if rule.retention is not None and rule.retention <= 0:
        raise ValidationError("retention must be longer than 0 (or unset to keep what the rule cached)",
                              field="retention")
    if rule.sync_tags is not None:

        TagFilter.parse(rule.sync_tags)
    if rule.sync_interval is not None and rule.sync_interval < 60:
        raise ValidationError("the tag-sync interval must be at least 1m", field="sync_interval")
