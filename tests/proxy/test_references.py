"""OCI grammar, checked against generated input (hypothesis)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from regcache.proxy.core.references import (
    PATH_COMPONENT,
    Reference,
    is_digest,
    is_login_server,
    is_repository_name,
    is_tag,
    repository_problem,
)

components = st.from_regex(re.compile(PATH_COMPONENT), fullmatch=True).filter(lambda c: len(c) <= 40)
names = st.lists(components, min_size=1, max_size=5).map("/".join).filter(lambda n: len(n) <= 255)


@given(names)
def test_generated_names_are_valid(name):
    assert is_repository_name(name)
    assert repository_problem(name) is None


@given(names, st.sampled_from(["A", ":", "@", " ", "..", "//", "/", "\x00", "é", "%2e"]),
       st.integers(min_value=0))
def test_names_with_a_bad_insertion_are_refused(name, bad, where):
    at = where % (len(name) + 1)
    mutated = name[:at] + bad + name[at:]
    if bad == "/" and 0 < at < len(name) and name[at - 1] != "/" and name[at] != "/":
        return  # a slash between two components is still a valid name
    assert not is_repository_name(mutated)
    problem = repository_problem(mutated)
    assert problem and "\n" not in problem


def test_name_length_limit():
    assert is_repository_name("a" * 255)
    assert not is_repository_name("a" * 256)


@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", fullmatch=True))
def test_generated_tags_are_valid(tag):
    assert is_tag(tag)
    assert Reference.parse(tag) == Reference(tag)


def test_tags_and_digests():
    assert not is_tag("." + "a")
    assert not is_tag("a" * 129)
    assert is_digest("sha256:" + "0" * 64)
    assert is_digest("sha512:" + "f" * 128)
    assert not is_digest("sha256:" + "0" * 63)
    assert not is_digest("sha256:" + "G" * 64)
    assert not is_digest("md5:" + "0" * 32)  # not an algorithm we can verify
    assert Reference.parse("sha256:" + "a" * 64).is_digest
    assert Reference.parse("../etc") is None


def test_login_servers():
    for ok in ("docker.io", "127.0.0.1:5000", "localhost", "registry-1.example.com:443", "[::1]:5000"):
        assert is_login_server(ok), ok
    for bad in ("", "http://ghcr.io", "ghcr.io/acme", "host:99999", "-bad.example", "a b"):
        assert not is_login_server(bad), bad
