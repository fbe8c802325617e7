"""WWW-Authenticate parsing and the token cache."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from regcache.proxy.upstream.auth import TokenCache, basic_header, parse_challenge


def test_bearer_challenge():
    c = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                        'scope="repository:library/ubuntu:pull"')
    assert c is not None and c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/ubuntu:pull"}


def test_basic_challenge_and_odd_spacing():
    c = parse_challenge('Basic realm="Registry Realm"')
    assert c is not None and c.scheme == "basic" and c.realm == "Registry Realm"
    c = parse_challenge('bearer  realm = "r" , service=svc,scope="a:b:pull,push"')
    assert c is not None and c.params == {"realm": "r", "service": "svc", "scope": "a:b:pull,push"}
    c = parse_challenge(r'Bearer realm="with \"quotes\""')
    assert c is not None and c.realm == 'with "quotes"'


def test_malformed_challenges():
    assert parse_challenge("") is None
    assert parse_challenge("   ") is None
    assert parse_challenge('"Bearer" realm=x') is None


@given(st.text(max_size=300))
def test_parser_never_raises(header):
    parse_challenge(header)


def test_basic_header():
    assert basic_header("user", "pa:ss") == "Basic dXNlcjpwYTpzcw=="


def test_token_cache_expiry():
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put(("h", "repo", None), "Bearer abc", 300)
    assert cache.get(("h", "repo", None)) == "Bearer abc"
    now[0] = 300 * 0.9 - 6
    assert cache.get(("h", "repo", None)) == "Bearer abc"
    now[0] = 300
    assert cache.get(("h", "repo", None)) is None
    cache.put(("h", "repo", None), "Bearer abc", 300)
    cache.forget(("h", "repo", None))
    assert cache.get(("h", "repo", None)) is None
