"""The cache-rule engine: validation (DESIGN 1) and matching, table-driven."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from regcache.proxy.core.catalogue import UpstreamCatalogue
from regcache.proxy.core.errors import ConflictError, LimitError, ValidationError
from regcache.proxy.core.models import CacheRule, CredentialSet
from regcache.proxy.core.rules import (
    MAX_RULES,
    RuleSet,
    check_credentials,
    check_name,
    check_new_rule,
)

CATALOGUE = UpstreamCatalogue()
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

CRED_SETS = {
    "hub-creds": CredentialSet("hub-creds", "docker.io", "env://HUB_USER", "env://HUB_TOKEN"),
    "ghcr-creds": CredentialSet("ghcr-creds", "ghcr.io", "env://GH_USER", "env://GH_TOKEN"),
}


def build(*specs: tuple[str, str, str] | tuple[str, str, str, str]) -> RuleSet:
    """Create rules one after another through the validator, as the control plane does."""
    rules: list[CacheRule] = []
    for i, spec in enumerate(specs):
        name, source, target, *cred = spec
        candidate = CacheRule(name, source, target, cred[0] if cred else None, T0 + timedelta(seconds=i))
        rules.append(check_new_rule(candidate, RuleSet(rules), CRED_SETS, CATALOGUE))
    return RuleSet(rules)


def add(existing: RuleSet, name: str, source: str, target: str, cred: str | None = None) -> CacheRule:
    return check_new_rule(CacheRule(name, source, target, cred, T0 + timedelta(days=1)), existing, CRED_SETS,
                          CATALOGUE)


# -- wildcard levels and their mappings (the ACR examples) -------------------------------------

@pytest.mark.parametrize(
    ("rules", "client_name", "expected_upstream", "expected_rule"),
    [
        # registry level
        ([("all-mcr", "mcr.microsoft.com/*", "*")], "myapp/image1", "mcr.microsoft.com/myapp/image1", "all-mcr"),
        ([("all-mcr", "mcr.microsoft.com/*", "*")], "myapp/image2", "mcr.microsoft.com/myapp/image2", "all-mcr"),
        # repository level
        ([("dotnet", "mcr.microsoft.com/dotnet/*", "dotnet/*")], "dotnet/sdk", "mcr.microsoft.com/dotnet/sdk",
         "dotnet"),
        ([("dotnet", "mcr.microsoft.com/dotnet/*", "dotnet/*")], "dotnet/runtime",
         "mcr.microsoft.com/dotnet/runtime", "dotnet"),
        # two repository-level wildcards to different upstreams stand together
        ([("lib-dotnet", "mcr.microsoft.com/dotnet/*", "library/dotnet/*"),
          ("lib-python", "docker.io/library/python/*", "library/python/*", "hub-creds")],
         "library/dotnet/app1", "mcr.microsoft.com/dotnet/app1", "lib-dotnet"),
        ([("lib-dotnet", "mcr.microsoft.com/dotnet/*", "library/dotnet/*"),
          ("lib-python", "docker.io/library/python/*", "library/python/*", "hub-creds")],
         "library/python/app3", "docker.io/library/python/app3", "lib-python"),
        # a deeper name under a wildcard keeps every remaining segment
        ([("team-ghcr", "ghcr.io/acme/*", "team/*")], "team/a/b/c", "ghcr.io/acme/a/b/c", "team-ghcr"),
        # static rule
        ([("ubuntu", "docker.io/library/ubuntu", "ubuntu", "hub-creds")], "ubuntu", "docker.io/library/ubuntu",
         "ubuntu"),
        # Docker Hub: a one-component repository gains library/, in a static source...
        ([("ubuntu", "docker.io/ubuntu", "ubuntu", "hub-creds")], "ubuntu", "docker.io/library/ubuntu", "ubuntu"),
        # ... and through a registry-level wildcard
        ([("hub-all", "docker.io/*", "*", "hub-creds")], "ubuntu", "docker.io/library/ubuntu", "hub-all"),
        ([("hub-all", "docker.io/*", "*", "hub-creds")], "bitnami/redis", "docker.io/bitnami/redis", "hub-all"),
    ],
)
def test_wildcard_mapping(rules, client_name, expected_upstream, expected_rule):
    match = build(*rules).match(client_name)
    assert match is not None
    assert str(match.upstream) == expected_upstream
    assert match.rule.name == expected_rule
    assert match.repository == client_name


@pytest.mark.parametrize(
    ("rules", "client_name"),
    [
        ([], "ubuntu"),
        ([("dotnet", "mcr.microsoft.com/dotnet/*", "dotnet/*")], "dotnet"),  # the prefix itself is not covered
        ([("dotnet", "mcr.microsoft.com/dotnet/*", "dotnet/*")], "dotnetx/sdk"),  # segment-wise, not string prefix
        ([("ubuntu", "docker.io/library/ubuntu", "ubuntu", "hub-creds")], "ubuntu/sub"),
    ],
)
def test_no_match(rules, client_name):
    assert build(*rules).match(client_name) is None


# -- overlaps ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("first", "second"),
    [
        # ACR example 1: with * in place, library/* is refused
        (("all-mcr", "mcr.microsoft.com/*", "*"), ("lib-hub", "docker.io/library/*", "library/*", "hub-creds")),
        # and the reverse order
        (("lib-hub", "docker.io/library/*", "library/*", "hub-creds"), ("all-mcr", "mcr.microsoft.com/*", "*")),
        # ACR example 2: with library/* in place, library/dotnet/* is refused
        (("lib-mcr", "mcr.microsoft.com/library/*", "library/*"),
         ("lib-dotnet", "docker.io/library/dotnet/*", "library/dotnet/*", "hub-creds")),
        # and the reverse order
        (("lib-dotnet", "docker.io/library/dotnet/*", "library/dotnet/*", "hub-creds"),
         ("lib-mcr", "mcr.microsoft.com/library/*", "library/*")),
        # the same wildcard target twice
        (("team-one", "ghcr.io/acme/*", "team/*"), ("team-two", "quay.io/acme/*", "team/*")),
    ],
)
def test_overlapping_wildcards_refused(first, second):
    existing = build(first)
    with pytest.raises(ConflictError) as info:
        add(existing, *second)
    message = str(info.value)
    assert "overlaps the wildcard rule" in message
    assert f"'{first[0]}'" in message  # names the conflicting rule
    assert info.value.field == "target"
    assert "\n" not in message


def test_static_may_overlap_wildcard_and_wins_at_match_time():
    existing = build(("all-mcr", "mcr.microsoft.com/*", "*"))
    static = add(existing, "lib-dotnet", "docker.io/library/dotnet", "library/dotnet", "hub-creds")
    rules = RuleSet([*existing.rules, static])
    match = rules.match("library/dotnet")
    assert match is not None and match.rule.name == "lib-dotnet"
    assert str(match.upstream) == "docker.io/library/dotnet"
    # every other name still goes to the wildcard
    other = rules.match("library/dotnet2")
    assert other is not None and other.rule.name == "all-mcr"


def test_static_and_wildcard_in_either_order():
    rules = build(("lib-dotnet", "docker.io/library/dotnet", "library/dotnet", "hub-creds"),
                  ("all-mcr", "mcr.microsoft.com/*", "*"))
    assert rules.match("library/dotnet").rule.name == "lib-dotnet"


def test_duplicate_static_target_refused():
    existing = build(("ubuntu-one", "docker.io/library/ubuntu", "ubuntu", "hub-creds"))
    with pytest.raises(ConflictError, match="'ubuntu' is already the target of rule 'ubuntu-one'"):
        add(existing, "ubuntu-two", "ghcr.io/acme/ubuntu", "ubuntu")


def test_duplicate_name_refused():
    existing = build(("ubuntu-one", "docker.io/library/ubuntu", "ubuntu", "hub-creds"))
    with pytest.raises(ConflictError, match="named 'ubuntu-one' already exists"):
        add(existing, "ubuntu-one", "ghcr.io/acme/app", "app")


# -- names, sources, targets --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("abcd", "5 to 50 characters"),
        ("a" * 51, "5 to 50 characters"),
        ("", "5 to 50 characters"),
        ("my_rule", "only letters, digits and hyphens"),
        ("my rule", "only letters, digits and hyphens"),
        ("règle-1", "only letters, digits and hyphens"),
        ("rule.one", "only letters, digits and hyphens"),
    ],
)
def test_bad_names_refused(name, reason):
    with pytest.raises(ValidationError, match=reason) as info:
        add(RuleSet(), name, "ghcr.io/acme/app", "app")
    assert info.value.field == "name"


@pytest.mark.parametrize("name", ["abcde", "A" * 50, "Hello-World-Cache", "rule-1", "12345"])
def test_good_names_accepted(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("source", "target", "reason", "field"),
    [
        ("docker.io/library/ubuntu:22.04", "ubuntu", "must not carry a tag", "source"),
        ("docker.io/library/ubuntu@sha256:" + "a" * 64, "ubuntu", "must not carry a digest", "source"),
        ("ghcr.io/acme/app", "app:latest", "must not carry a tag", "target"),
        ("registry.example.com/acme/app", "app", "unknown login server 'registry.example.com'", "source"),
        ("ghcr.io", "app", "must be LOGIN_SERVER/PATH", "source"),
        ("ghcr.io/", "app", "must be LOGIN_SERVER/PATH", "source"),
        ("ghcr.io/acme/*/app", "app", "'\\*' is allowed only as the whole last segment", "source"),
        ("ghcr.io/acme/app*", "app/*", "'\\*' is allowed only as the whole last segment", "source"),
        ("ghcr.io/acme/*", "te*m/*", "'\\*' is allowed only as the whole last segment", "target"),
        ("ghcr.io/Acme/app", "app", "must be lower case", "source"),
        ("ghcr.io/acme/app", "App", "must be lower case", "target"),
        ("ghcr.io/acme//app", "app", "empty path segment", "source"),
        ("ghcr.io/acme/app", "-app", "start and end with a letter or digit", "target"),
        ("ghcr.io/acme/*", "app", "a wildcard rule ends both sides", "target"),
        ("ghcr.io/acme/app", "team/*", "a wildcard rule ends both sides", "target"),
        ("ghcr.io/acme/app", "a" * 256, "the limit is 255", "target"),
    ],
)
def test_bad_repositories_refused(source, target, reason, field):
    with pytest.raises(ValidationError, match=reason) as info:
        add(RuleSet(), "my-rule", source, target)
    assert info.value.field == field


def test_login_server_is_case_insensitive_and_normalised():
    rule = add(RuleSet(), "my-rule", "GHCR.IO/acme/*", "team/*")
    assert rule.source_repository == "ghcr.io/acme/*"


# -- credentials and auth policies --------------------------------------------------------------

@pytest.mark.parametrize(
    ("source", "cred", "reason"),
    [
        ("docker.io/library/ubuntu", None, "docker.io supports authenticated pulls only"),
        ("docker.io/bitnami/redis", None, "docker.io supports authenticated pulls only"),
        ("mcr.microsoft.com/dotnet/sdk", "hub-creds", "mcr.microsoft.com supports unauthenticated pulls only"),
        ("public.ecr.aws/nginx/nginx", "hub-creds", "public.ecr.aws supports unauthenticated pulls only"),
        ("ghcr.io/acme/app", "hub-creds", "credential set 'hub-creds' is for docker.io, but the rule's source "
                                          "is on ghcr.io"),
        ("ghcr.io/acme/app", "no-such-set", "credential set 'no-such-set' does not exist"),
    ],
)
def test_credential_rules(source, cred, reason):
    with pytest.raises(ValidationError, match=reason) as info:
        add(RuleSet(), "my-rule", source, "app", cred)
    assert info.value.field == "credential_set"


@pytest.mark.parametrize(("source", "cred"), [("ghcr.io/acme/app", None), ("ghcr.io/acme/app", "ghcr-creds"),
                                               ("quay.io/acme/app", None), ("mcr.microsoft.com/dotnet/sdk", None),
                                               ("docker.io/library/ubuntu", "hub-creds")])
def test_credential_rules_allowed(source, cred):
    assert add(RuleSet(), "my-rule", source, "app", cred).credential_set == cred


def test_check_credentials_for_update():
    check_credentials("ghcr.io", None, CRED_SETS, CATALOGUE)
    with pytest.raises(ValidationError, match="authenticated pulls only"):
        check_credentials("docker.io", None, CRED_SETS, CATALOGUE)


# -- limits ----------------------------------------------------------------------------------------

def test_the_1001st_rule_is_refused():
    rules = RuleSet(
        CacheRule(f"rule-{i:04d}", f"ghcr.io/acme/app{i}", f"app{i}", None, T0) for i in range(MAX_RULES)
    )
    with pytest.raises(LimitError, match="limit of 1,000"):
        add(rules, "one-too-many", "ghcr.io/acme/extra", "extra")
    # one fewer leaves room
    assert add(RuleSet(rules.rules[:-1]), "one-more", "ghcr.io/acme/extra", "extra")


# -- mirror mode (containerd's ?ns=) -------------------------------------------------------------

@pytest.mark.parametrize(
    ("registry", "name", "expected_rule", "expected_repository", "expected_upstream"),
    [
        ("docker.io", "library/alpine", "hub-all", "hub/library/alpine", "docker.io/library/alpine"),
        ("docker.io", "alpine", "hub-all", "hub/library/alpine", "docker.io/library/alpine"),
        ("docker.io", "library/ubuntu", "ubuntu", "ubuntu", "docker.io/library/ubuntu"),
        ("ghcr.io", "acme/tool", "team-ghcr", "team/tool", "ghcr.io/acme/tool"),
        ("ghcr.io", "other/tool", None, None, None),
        ("quay.io", "acme/tool", None, None, None),
    ],
)
def test_match_source_for_mirror_requests(registry, name, expected_rule, expected_repository, expected_upstream):
    rules = build(("hub-all", "docker.io/*", "hub/*", "hub-creds"),
                  ("ubuntu", "docker.io/library/ubuntu", "ubuntu", "hub-creds"),
                  ("team-ghcr", "ghcr.io/acme/*", "team/*"))
    match = rules.match_source(registry, name)
    if expected_rule is None:
        assert match is None
    else:
        assert match is not None
        assert (match.rule.name, match.repository, str(match.upstream)) == (
            expected_rule, expected_repository, expected_upstream)
