"""The outbound policy (issue: hostile upstreams): where an upstream's redirects, links and token realms may lead
regcache, and where the credential set may go.

Integration tests run the real proxy against the hostile upstream (an ASGI app under uvicorn) and separate
loopback capture servers that record every request: one playing the internal service an SSRF would reach
(never contacted), others playing a blob CDN or a token service whose origin the test allows for the upstream.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path

import httpcore
import httpx
import pytest

from regcache.proxy.core.catalogue import BUILTIN_UPSTREAMS, normalize_allowed_origins, normalize_origin, origin_of
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import AuthPolicy, Upstream
from regcache.proxy.core.oci import OCI_MANIFEST
from regcache.proxy.upstream.auth import MAX_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME, TokenCache, token_lifetime
from regcache.proxy.upstream.client import Credentials, UpstreamClient, UpstreamProtocolError, UpstreamRefused
from regcache.proxy.upstream.policy import (
    OutboundRefused,
    PublicAddressBackend,
    Route,
    address_problem,
    realm_route,
    route,
)
from tests.helpers.capture_server import CaptureServer
from tests.helpers.cli import cli, ok
from tests.helpers.hostile_upstream import HostileUpstream
from tests.helpers.manifests import MANIFEST
from tests.proxy.conftest import start_regcache

USER, PASSWORD = "evil-user", "evil-password-never-leaves"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


# -- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture
def hostile():
    upstream = HostileUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture
def capture():
    """The internal service: no test allows its origin, and every test asserts it heard nothing."""
    server = CaptureServer().start()
    yield server
    server.stop()
    assert server.requests == [], f"the capture server was contacted: {server.requests}"


@pytest.fixture
def servers():
    """Start CaptureServers on demand (CDNs, token services); all stopped after the test."""
    started: list[CaptureServer] = []

    def start(server: CaptureServer) -> CaptureServer:
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def _use(regcache, hostile: HostileUpstream, *allow: str, credentials: bool = False) -> None:
    """Register ``hostile`` allowing ``allow`` (origins), with rule evil/* (and a credential set if asked)."""
    regcache.control.add_upstream(hostile.host, hostile.url, "both", allow)
    cred_set = None
    if credentials:
        for name, value in (("user", USER), ("password", PASSWORD)):
            regcache.control.set_secret(f"keyring://regcache-tests/evil-{name}", value)
        regcache.control.create_credential_set("evil-creds", hostile.host, "keyring://regcache-tests/evil-user",
                                               "keyring://regcache-tests/evil-password")
        cred_set = "evil-creds"
    regcache.control.create_rule("evil-all", f"{hostile.host}/evil/*", "evil/*", cred_set)


def _error(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["errors"][0]["message"]


def _nothing_stored(regcache) -> None:
    conn = regcache.control.store.conn
    assert conn.execute("SELECT COUNT(*) FROM manifests").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM tags").fetchone()[0] == 0
    assert regcache.blob_files() == []


# -- redirects -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.1", "2130706433", "0.0.0.0", "[::ffff:127.0.0.1]"])
def test_a_redirect_to_a_loopback_service_is_refused_and_it_is_never_contacted(regcache, hostile, capture, host):
    """A 302 to the internal service, by address or by a name resolving to loopback, fetches nothing."""
    _use(regcache, hostile)
    hostile.redirects["evil/app"] = f"http://{host}:{capture.port}/internal-secret?X-Amz-Signature=secret"
    with regcache.http() as http:
        manifest = http.get("/v2/evil/app/manifests/1")
        blob = http.get("/v2/evil/app/blobs/sha256:" + "a" * 64)
    status, message = _error(manifest)
    refused = origin_of(f"http://{host}:{capture.port}")  # as written in upstream list: [::ffff:7f00:1]
    assert status == 502, message
    assert f"refused a redirect to {refused}, which " in message, message
    assert "address" in message and "nothing was fetched from it or stored" in message
    assert f"--allow-origin {refused}`" in message  # how to allow it, if genuine
    assert f"regcache upstream add --login-server {hostile.host} --url {hostile.url}" in message
    assert "internal-secret" not in message and "X-Amz-Signature" not in message  # the origin only
    assert _error(blob)[0] == 502
    _nothing_stored(regcache)


def test_an_allowed_cdn_is_followed_without_authorization_and_no_log_keeps_a_signature_or_a_login(
        regcache, hostile, capture, servers, caplog):
    """The credential set reaches the allowed token service only; the allowed CDN gets no Authorization;
    at DEBUG, httpx's and httpcore's records carry neither the presigned query nor any login."""
    caplog.set_level(logging.DEBUG)
    token = servers(CaptureServer.token_service("bearer-token-value"))
    cdn = servers(CaptureServer(MANIFEST, headers={"Content-Type": OCI_MANIFEST}))
    _use(regcache, hostile, token.origin, cdn.origin, credentials=True)
    hostile.realm = f"{token.url}/token"
    hostile.redirects["evil/app"] = f"{cdn.url}/manifest?X-Amz-Signature=secret-signature&X-Amz-Credential=k"
    with regcache.http() as http:
        answer = http.get("/v2/evil/app/manifests/1")
    assert answer.status_code == 200, answer.text
    assert answer.content == MANIFEST
    assert [r.headers.get("authorization") for r in token.requests] == [BASIC]  # an allowed realm: the login
    assert cdn.requests and all("authorization" not in r.headers for r in cdn.requests)
    assert any(h.get("authorization") == "Bearer bearer-token-value" for h in hostile.request_headers)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/manifest?<redacted>" in logged  # httpx did log the CDN request, at INFO
    assert "receive_response_headers" in logged  # and httpcore its headers, at DEBUG
    for secret in ("secret-signature", "X-Amz-Credential", PASSWORD, BASIC.split()[1], "bearer-token-value"):
        assert secret not in logged, secret


def test_an_origin_allowed_for_another_upstream_is_not_allowed_for_this_one(regcache, hostile, servers):
    other = HostileUpstream().start()
    try:
        cdn = servers(CaptureServer(MANIFEST, headers={"Content-Type": OCI_MANIFEST}))
        regcache.control.add_upstream(other.host, other.url, "both", [cdn.origin])
        _use(regcache, hostile)
        hostile.redirects["evil/app"] = f"{cdn.url}/manifest"
        with regcache.http() as http:
            status, message = _error(http.get("/v2/evil/app/manifests/1"))
        assert status == 502 and f"refused a redirect to {cdn.origin}" in message
        assert cdn.requests == []
    finally:
        other.stop()


def test_a_tag_list_link_to_a_loopback_service_is_refused(regcache, hostile, capture):
    """A next-page ``Link`` is followed only to the same tag list (tests/proxy/test_content_rules.py), so one
    to a loopback service is refused before the outbound policy is even asked; it is never contacted."""
    _use(regcache, hostile)
    hostile.tag_lists["evil/app"] = b'{"name":"evil/app","tags":["1"]}'
    hostile.tag_links["evil/app"] = f"http://localhost:{capture.port}/v2/evil/app/tags/list?n=1"
    with regcache.http() as http:
        status, message = _error(http.get("/v2/evil/app/tags/list"))
    assert status == 502 and "tag-list Link to another URL" in message and "not followed" in message, message


# -- token realms ----------------------------------------------------------------------------------------

def test_the_credential_set_is_never_sent_to_a_realm_that_is_not_allowed(regcache, hostile, capture):
    _use(regcache, hostile, credentials=True)
    hostile.realm = f"{capture.url}/token"
    with regcache.http() as http:
        status, message = _error(http.get("/v2/evil/app/manifests/1"))
    assert status == 502
    assert f"refused the token service at {capture.origin}" in message
    assert "credential set is not sent to it" in message and f"--allow-origin {capture.origin}" in message
    assert PASSWORD not in message
    _nothing_stored(regcache)


def test_an_anonymous_pull_asks_no_loopback_realm_that_is_not_allowed(regcache, hostile, capture):
    _use(regcache, hostile)
    hostile.realm = f"http://localhost:{capture.port}/token"
    with regcache.http() as http:
        status, message = _error(http.get("/v2/evil/app/manifests/1"))
    assert status == 502
    assert f"refused the token service at http://localhost:{capture.port}" in message
    assert "resolves to a loopback address" in message


def test_an_allowed_realm_gets_the_credential_set_and_its_token_lifetime_is_clamped(regcache, hostile, servers):
    """An ``expires_in`` of Infinity (as a token service may write it) keeps the token a day at most."""
    token = servers(CaptureServer.token_service("long-lived", expires_in=math.inf))
    hostile.manifests[("evil/app", "1")] = (OCI_MANIFEST, MANIFEST)
    _use(regcache, hostile, token.origin, credentials=True)
    hostile.realm = f"{token.url}/token"
    with regcache.http() as http:
        assert http.get("/v2/evil/app/manifests/1").status_code == 200
    assert b"Infinity" in token.body and [r.headers["authorization"] for r in token.requests] == [BASIC]
    tokens = regcache.server.app.state.registry.cache.upstream.tokens
    creds = Credentials("evil-creds", USER, PASSWORD)
    remaining = tokens.remaining((hostile.host, "evil/app", creds.login_key))
    assert remaining is not None and 0 < remaining <= MAX_TOKEN_LIFETIME


# -- https -> http ---------------------------------------------------------------------------------------

@pytest.fixture
def tls_hostile(tmp_path: Path, monkeypatch):
    """The hostile upstream over https, with a test CA the proxy's clients trust (SSL_CERT_FILE)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    ca.cert_pem.write_to_path(ca_file)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    upstream = HostileUpstream(tls=(str(cert_file), str(key_file))).start()
    yield upstream
    upstream.stop()


@pytest.mark.parametrize("via", ["redirect", "realm"])
def test_https_never_leads_to_plain_http(home, keyring_env, tls_hostile, capture, via):
    regcache = start_regcache(home)  # after SSL_CERT_FILE is set: its clients trust the test CA
    try:
        tls_hostile.manifests[("evil/ok", "1")] = (OCI_MANIFEST, MANIFEST)
        _use(regcache, tls_hostile)
        with regcache.http() as http:
            assert http.get("/v2/evil/ok/manifests/1").status_code == 200  # https itself works
            if via == "redirect":
                tls_hostile.redirects["evil/app"] = f"{capture.url}/blob"
            else:
                tls_hostile.realm = f"{capture.url}/token"
            status, message = _error(http.get("/v2/evil/app/manifests/1"))
        assert status == 502 and "plain http after https" in message and "regcache never allows that" in message
        assert "--allow-origin" not in message
        with pytest.raises(ValidationError, match="never follows https to http"):
            regcache.control.add_upstream(tls_hostile.host, tls_hostile.url, "both", [capture.origin])
    finally:
        regcache.proxy.stop()
        regcache.control.close()


# -- configuration ---------------------------------------------------------------------------------------

def test_allowed_origins_are_a_setting_of_the_upstream_shown_by_upstream_list(home, keyring_env):
    hub = next(u for u in json.loads(ok("upstream", "list", "-o", "json").stdout) if u["loginServer"] == "docker.io")
    assert hub["allowedOrigins"] == ["https://auth.docker.io:443"]  # the built-in's token service
    added = json.loads(ok("upstream", "add", "--login-server", "127.0.0.1:5000", "--url", "http://127.0.0.1:5000",
                          "--allow-origin", "http://127.0.0.1:5001", "--allow-origin", "HTTP://LocalHost:5002/",
                          "--allow-origin", "http://127.0.0.1:5000", "-o", "json").stdout)
    assert added["allowedOrigins"] == ["http://127.0.0.1:5001", "http://localhost:5002"]  # its own is implied
    table = ok("upstream", "list").stdout
    assert "ALLOWED ORIGINS" in table and "http://127.0.0.1:5001,http://localhost:5002" in table
    # pointed elsewhere, a built-in keeps only the allowances given with the override
    moved = json.loads(ok("upstream", "add", "--login-server", "docker.io", "--url", "https://mirror.example",
                          "-o", "json").stdout)
    assert moved["allowedOrigins"] == []
    moved = json.loads(ok("upstream", "add", "--login-server", "docker.io", "--url", "https://mirror.example",
                          "--allow-origin", "https://auth.mirror.example", "-o", "json").stdout)
    assert moved["allowedOrigins"] == ["https://auth.mirror.example:443"]
    ok("upstream", "remove", "--login-server", "docker.io")
    hub = next(u for u in json.loads(ok("upstream", "list", "-o", "json").stdout) if u["loginServer"] == "docker.io")
    assert hub["allowedOrigins"] == ["https://auth.docker.io:443"]
    for bad, says in (("auth.example", "scheme://host"), ("https://auth.example/token", "no path"),
                      ("ftp://auth.example", "https:// or http://"), ("http://auth.example", "never follows https")):
        refused = cli("upstream", "add", "--login-server", "docker.io", "--url", "https://mirror.example",
                      "--allow-origin", bad)
        assert refused.exit_code != 0 and says in refused.stderr, (bad, refused.stderr)
        assert "Traceback" not in refused.stderr


def test_rules_files_carry_allowed_origins(home, keyring_env):
    from regcache.proxy.config.control import ControlPlane
    from regcache.proxy.config.declarative import apply_document, export_document, plan_document

    control = ControlPlane.open(home)
    try:
        control.add_upstream("127.0.0.1:5000", "http://127.0.0.1:5000", "both", ["http://127.0.0.1:5001"])
        exported = export_document(control)
        assert "allowedOrigins" in exported and "http://127.0.0.1:5001" in exported
        changes = apply_document(control, exported.replace("http://127.0.0.1:5001", "http://127.0.0.1:5009"))
        assert any("allowed origins http://127.0.0.1:5001 -> http://127.0.0.1:5009" in str(c) for c in changes), changes
        assert control.catalogue().get("127.0.0.1:5000").allowed_origins == ("http://127.0.0.1:5009",)
        assert plan_document(control, export_document(control)) == []
    finally:
        control.close()


@pytest.mark.parametrize(("value", "origin"), [
    ("https://auth.docker.io", "https://auth.docker.io:443"), ("http://Example.COM:80/", "http://example.com:80"),
    ("http://[::1]:5000", "http://[::1]:5000"), ("http://[0:0::1]", "http://[::1]:80"),
    ("https://bücher.example", "https://xn--bcher-kva.example:443")])
def test_origins_are_normalized(value, origin):
    assert normalize_origin(value) == origin


@pytest.mark.parametrize("value", ["auth.example", "https://", "https://a.example/x", "https://a.example?q",
                                   "https://u:p@a.example", "https://a.example:99999", "file:///etc/passwd"])
def test_bad_origins_are_refused(value):
    with pytest.raises(ValidationError):
        normalize_origin(value)


def test_allowed_origins_are_bounded():
    many = [f"https://cdn{i}.example" for i in range(17)]
    with pytest.raises(ValidationError, match="at most 16"):
        normalize_allowed_origins(many, "https://registry.example")


# -- the policy, in process ------------------------------------------------------------------------------

UP = Upstream("reg.test", "https://reg.test", AuthPolicy.BOTH, allowed_origins=("https://auth.test:443",))


@pytest.mark.parametrize(("target", "expected"), [
    ("https://reg.test/v2/x", Route.TRUSTED), ("https://reg.test:443/v2/x", Route.TRUSTED),
    ("https://auth.test/token", Route.TRUSTED), ("https://cdn.example/blob", Route.PUBLIC),
    ("https://reg.test:8443/v2/x", Route.PUBLIC), ("https://auth.test:444/token", Route.PUBLIC)])
def test_routes_by_origin(target, expected):
    assert route(UP, UP.base_url, target) is expected


@pytest.mark.parametrize("target", ["http://reg.test/v2/x", "http://auth.test:443/token", "http://cdn.example/x"])
def test_no_hop_goes_from_https_to_http(target):
    with pytest.raises(OutboundRefused, match="plain http after https") as info:
        route(UP, "https://cdn.example/a", target)
    assert not info.value.allowable


def test_realms_get_the_credential_set_only_on_trusted_origins():
    assert realm_route(UP, "https://auth.test/token", with_credentials=True) is Route.TRUSTED
    assert realm_route(UP, "https://reg.test/token", with_credentials=True) is Route.TRUSTED
    assert realm_route(UP, "https://tokens.example/t", with_credentials=False) is Route.PUBLIC
    with pytest.raises(OutboundRefused, match="credential set is not sent"):
        realm_route(UP, "https://tokens.example/t", with_credentials=True)
    with pytest.raises(OutboundRefused, match="not an absolute http"):
        realm_route(UP, "/relative/token", with_credentials=False)


def test_built_in_realm_hosts():
    assert BUILTIN_UPSTREAMS["docker.io"].allowed_origins == ("https://auth.docker.io:443",)
    hub = BUILTIN_UPSTREAMS["docker.io"]
    assert realm_route(hub, "https://auth.docker.io/token", with_credentials=True) is Route.TRUSTED
    for server, realm in (("ghcr.io", "https://ghcr.io/token"), ("quay.io", "https://quay.io/v2/auth"),
                          ("gcr.io", "https://gcr.io/v2/token"), ("public.ecr.aws", "https://public.ecr.aws/token/")):
        assert realm_route(BUILTIN_UPSTREAMS[server], realm, with_credentials=True) is Route.TRUSTED


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                     "169.254.169.254", "fe80::1", "fe80::1%eth0", "fc00::1", "0.0.0.0", "::",
                                     "::ffff:10.0.0.1", "::ffff:127.0.0.1", "100.64.0.1", "224.0.0.1", "240.0.0.1"])
def test_non_public_addresses(address):
    assert address_problem(address) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses(address):
    assert address_problem(address) is None


class _Recorder(httpcore.AsyncNetworkBackend):
    """Records where connections were asked to go and makes none."""

    def __init__(self) -> None:
        self.connected: list[str] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connected.append(host)
        raise httpcore.ConnectError("recorded only")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_address_checked_is_the_address_connected_to(anyio_backend):
    """A name is resolved once: a rebinding answer (public, then private) cannot swap the address."""
    answers = [["93.184.215.14"], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    inner = _Recorder()
    with pytest.raises(httpcore.ConnectError):
        await PublicAddressBackend(inner, rebinding).connect_tcp("rebind.example", 443)
    assert inner.connected == ["93.184.215.14"] and answers == [["127.0.0.1"]]

    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.5"]

    inner = _Recorder()
    with pytest.raises(OutboundRefused, match=r"resolves to a private address \(10.0.0.5\)"):
        await PublicAddressBackend(inner, mixed).connect_tcp("mixed.example", 443)
    assert inner.connected == []  # refused before any connection


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_public_realms_are_asked_anonymously_through_the_public_pool(anyio_backend):
    """Anonymous pulls may use a realm on another public origin; nothing of the login goes there."""
    trusted: list[httpx.Request] = []
    public: list[httpx.Request] = []
    upstream = Upstream("reg.test", "https://reg.test", AuthPolicy.BOTH)

    def registry(request: httpx.Request) -> httpx.Response:
        trusted.append(request)
        if request.url.path == "/v2/lib/app/tags/list":
            return httpx.Response(200, json={"tags": ["a"]},
                                  headers={"link": '<https://elsewhere.example/v2/lib/app/tags/list?n=1>; rel="next"'})
        if request.headers.get("authorization") == "Bearer anon":
            return httpx.Response(200, content=MANIFEST, headers={"content-type": OCI_MANIFEST})
        return httpx.Response(401, headers={"www-authenticate": 'Bearer realm="https://tokens.example/t"'})

    def elsewhere(request: httpx.Request) -> httpx.Response:
        public.append(request)
        if request.url.host == "tokens.example":
            return httpx.Response(200, content=b'{"token": "anon", "expires_in": NaN}')
        return httpx.Response(200, json={"tags": ["b"]})

    client = UpstreamClient(httpx.MockTransport(registry), public_transport=httpx.MockTransport(elsewhere))
    got = await client.manifest(upstream, "lib/app", "latest", None)
    assert got.content == MANIFEST
    assert [r.url.host for r in public] == ["tokens.example"] and "authorization" not in public[0].headers
    assert all(r.url.host == "reg.test" for r in trusted)
    # NaN from the token service: renewed within the minimum, not kept forever
    assert client.tokens.remaining(("reg.test", "lib/app", None)) <= MIN_TOKEN_LIFETIME
    # a next-page link to another origin is not followed at all (only the same tag list's URL is)
    with pytest.raises(UpstreamProtocolError, match="tag-list Link to another URL"):
        await client.tags(upstream, "lib/app", None)
    assert public[-1].url.host == "tokens.example"
    # with a credential set the same realm is refused, and nothing is sent anywhere
    public.clear()
    with pytest.raises(UpstreamRefused, match="credential set is not sent"):
        await client.manifest(upstream, "lib/other", "latest", Credentials("c", "u", "p"))
    assert public == []
    await client.aclose()


# -- token lifetimes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expires_in", "lifetime"), [
    (None, 60.0), (300, 300.0), ("300", 300.0), (math.nan, MIN_TOKEN_LIFETIME), ("NaN", MIN_TOKEN_LIFETIME),
    (math.inf, MAX_TOKEN_LIFETIME), (-math.inf, MIN_TOKEN_LIFETIME), (-5, MIN_TOKEN_LIFETIME),
    (0, MIN_TOKEN_LIFETIME), (1e300, MAX_TOKEN_LIFETIME), (10**400, MAX_TOKEN_LIFETIME),
    (True, MIN_TOKEN_LIFETIME), ([1], MIN_TOKEN_LIFETIME), ({"a": 1}, MIN_TOKEN_LIFETIME)])
def test_token_lifetimes_are_clamped(expires_in, lifetime):
    assert token_lifetime(expires_in) == lifetime


def test_a_token_never_outlives_the_clamp_whatever_it_claims():
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    for i, claimed in enumerate((math.nan, math.inf, 10**400, -1)):
        cache.put(("reg", str(i)), "Bearer t", claimed)
    cache.put(("reg", "short"), "Bearer t", math.inf, longest=120)
    now[0] += 121
    assert cache.get(("reg", "short")) is None
    now[0] += MAX_TOKEN_LIFETIME
    assert all(cache.get(("reg", str(i))) is None for i in range(4))
