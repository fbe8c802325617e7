"""Every built-in upstream as it behaves on the wire, through its URL override (tests/helpers/registry_profiles.py).

Each profile is a real docker-registry behind a front answering as that registry does: Docker Hub (a token
service on another host, ``library/`` for one-part names, blobs sent to a CDN that must not see our login,
rate-limit headers, 429 with Retry-After), MCR (anonymous, blobs on a data host), ECR Public (an anonymous
bearer token, blobs at presigned storage URLs), ghcr.io, quay.io and gcr.io (bearer tokens on their own
origin, anonymous and with a credential set), registry.k8s.io (every request redirected to another registry
host). Each is pulled through regcache with skopeo, byte for byte, and again with the upstream gone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.registry_profiles import DataHost, ProfileFront
from tests.registries.skopeo import SkopeoError, assert_pulled


def _secret(regcache, name: str, value: str) -> str:
    secret_id = f"keyring://regcache-tests/{name}"
    regcache.control.set_secret(secret_id, value)
    return secret_id


def _credential_set(regcache, name: str, login_server: str, username: str, password: str) -> str:
    regcache.control.create_credential_set(name, login_server, _secret(regcache, f"{name}-u", username),
                                           _secret(regcache, f"{name}-p", password))
    return name


@pytest.fixture
def data_host() -> Iterator[DataHost]:
    host = DataHost().start()
    yield host
    host.stop()


@dataclass
class Pulled:
    regcache: object
    skopeo: object
    tmp_path: object

    def pull(self, target: str, tag: str, image, name: str) -> None:
        layout = self.skopeo.copy_to_oci(f"{self.regcache.host}/{target}:{tag}", self.tmp_path / name, tag)
        assert_pulled(layout, tag, image)


@pytest.fixture
def through(regcache, skopeo, tmp_path) -> Pulled:
    return Pulled(regcache, skopeo, tmp_path)


def _health(regcache, name: str) -> tuple[str, str | None]:
    health = regcache.control.get_credential_set(name).health
    return health.status.value, health.error_code


# -- Docker Hub ----------------------------------------------------------------------------------


def test_docker_hub(regcache, registry_factory, push_image, data_host, through, caplog):
    registry = registry_factory.token(allow_anonymous=False)
    front = ProfileFront(registry.url, issuer_url=registry.issuer.url, data_host=data_host, rate_limit=100).start()
    try:
        # the token service is another origin (auth.docker.io for the real one), as is the blob CDN
        regcache.control.add_upstream("docker.io", front.url, None, [registry.issuer.url, data_host.origin])
        _credential_set(regcache, "hub-creds", "docker.io", registry.issuer.username, registry.issuer.password)
        _credential_set(regcache, "hub-wrong", "docker.io", registry.issuer.username, "not-the-password")
        regcache.control.create_rule("hub-ubuntu", "docker.io/ubuntu", "ubuntu", "hub-creds")
        regcache.control.create_rule("hub-wrong", "docker.io/library/busybox", "busybox", "hub-wrong")
        image = push_image(registry, "library/ubuntu", "22.04", layers=[30_000, 2_000])  # one-part: library/
        push_image(registry, "library/busybox", "1", layers=[1_000])
        caplog.set_level(logging.DEBUG)

        through.pull("ubuntu", "22.04", image, "hub")
        assert data_host.requests and all("authorization" not in h for h in data_host.requests)
        assert any(p == "/v2/library/ubuntu/manifests/22.04" for _, p, _ in front.requests)
        assert registry.issuer.issued(), "the token came from the token service on its own host"
        budget = regcache.control.rate_limit("docker.io", "hub-creds")
        assert budget is not None and budget.limit == "100;w=21600" and budget.remaining.startswith("9")
        assert "X-Amz-Signature=" not in caplog.text  # presigned CDN URLs never reach the log

        with pytest.raises(SkopeoError):
            through.pull("busybox", "1", image, "wrong")
        assert _health(regcache, "hub-wrong") == ("Unhealthy", "UpstreamAuthFailed")
        assert _health(regcache, "hub-creds") == ("Healthy", None)

        # the pull limit is reached: a 429 with Retry-After; what is cached is still served
        front.throttled = True
        with regcache.http() as http:
            refused = http.get("/v2/ubuntu/manifests/24.04")
        assert refused.status_code == 429 and refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        through.pull("ubuntu", "22.04", image, "throttled")
        assert regcache.control.rate_limit("docker.io", "hub-creds").throttled >= 1
    finally:
        front.stop()
    through.pull("ubuntu", "22.04", image, "offline")  # Docker Hub unreachable


# -- MCR -----------------------------------------------------------------------------------------


def test_mcr(regcache, anonymous_registry, push_image, data_host, through):
    front = ProfileFront(anonymous_registry.url, data_host=data_host).start()
    try:
        regcache.control.add_upstream("mcr.microsoft.com", front.url, None, [data_host.origin])
        regcache.control.create_rule("mcr-dotnet", "mcr.microsoft.com/dotnet/runtime", "dotnet/runtime")
        image = push_image(anonymous_registry, "dotnet/runtime", "8.0", layers=[25_000])
        through.pull("dotnet/runtime", "8.0", image, "mcr")
        assert len(data_host.requests) >= 2 and all("authorization" not in h for h in data_host.requests)
        assert not any("authorization" in h for h in front.request_headers)  # anonymous, all the way
    finally:
        front.stop()
    through.pull("dotnet/runtime", "8.0", image, "offline")


# -- ECR Public ----------------------------------------------------------------------------------


def test_ecr_public(regcache, registry_factory, push_image, data_host, through, caplog):
    registry = registry_factory.token(allow_anonymous=True)
    front = ProfileFront(registry.url, issuer_url=registry.issuer.url, realm_path="/token/",
                         data_host=data_host).start()
    try:
        regcache.control.add_upstream("public.ecr.aws", front.url, None, [data_host.origin])
        regcache.control.create_rule("ecr-nginx", "public.ecr.aws/nginx/nginx", "nginx")
        image = push_image(registry, "nginx/nginx", "stable", layers=[20_000])
        caplog.set_level(logging.DEBUG)
        through.pull("nginx", "stable", image, "ecr")
        assert front.token_requests(), "an anonymous bearer token from the registry's own /token/"
        assert all("authorization" not in h for h in data_host.requests) and data_host.requests
        assert "X-Amz-Signature=" not in caplog.text and "X-Amz-Expires=300" not in caplog.text
    finally:
        front.stop()
    through.pull("nginx", "stable", image, "offline")


# -- ghcr.io, quay.io, gcr.io: bearer tokens on their own origin -----------------------------------


@pytest.mark.parametrize(("login_server", "realm_path"), [
    ("ghcr.io", "/token"), ("quay.io", "/v2/auth"), ("gcr.io", "/v2/token")])
def test_bearer_registries_anonymous_and_with_credentials(regcache, registry_factory, push_image, through,
                                                          login_server, realm_path):
    registry = registry_factory.token(allow_anonymous=True)
    front = ProfileFront(registry.url, issuer_url=registry.issuer.url, realm_path=realm_path).start()
    try:
        regcache.control.add_upstream(login_server, front.url)  # the token service is the registry's own origin
        _credential_set(regcache, "reg-creds", login_server, registry.issuer.username, registry.issuer.password)
        _credential_set(regcache, "reg-wrong", login_server, registry.issuer.username, "not-the-password")
        regcache.control.create_rule("public-app", f"{login_server}/acme/app", "public/app")
        regcache.control.create_rule("private-app", f"{login_server}/acme/app", "private/app", "reg-creds")
        regcache.control.create_rule("wrong-app", f"{login_server}/acme/app", "wrong/app", "reg-wrong")
        image = push_image(registry, "acme/app", "1.0", layers=[15_000])

        through.pull("public/app", "1.0", image, "anonymous")
        anonymous = [r for r in registry.issuer.issued() if r.username is None]
        assert anonymous and all(any((s.name, s.actions) == ("acme/app", ("pull",)) for s in r.scopes)
                                 for r in anonymous)
        through.pull("private/app", "1.0", image, "credentials")
        assert any(r.username == registry.issuer.username for r in registry.issuer.issued())
        assert _health(regcache, "reg-creds") == ("Healthy", None)
        assert all(realm_path == p for _, p, _ in front.token_requests())

        with pytest.raises(SkopeoError):
            through.pull("wrong/app", "1.0", image, "wrong")
        assert _health(regcache, "reg-wrong") == ("Unhealthy", "UpstreamAuthFailed")
        with regcache.http() as http:
            error = http.get("/v2/wrong/app/manifests/1.0").json()["errors"][0]
        assert error["code"] == "UNAUTHORIZED" and "reg-wrong" in error["message"]
    finally:
        front.stop()
    through.pull("public/app", "1.0", image, "offline-anonymous")
    through.pull("private/app", "1.0", image, "offline-credentials")


# -- registry.k8s.io -----------------------------------------------------------------------------


def test_registry_k8s_io_redirects_every_request(regcache, anonymous_registry, push_image, through):
    front = ProfileFront(anonymous_registry.url, redirect_all_to=anonymous_registry.url).start()
    try:
        # every request goes to a regional mirror: another origin, allowed for this upstream
        regcache.control.add_upstream("registry.k8s.io", front.url, None, [anonymous_registry.url])
        regcache.control.create_rule("k8s-pause", "registry.k8s.io/pause", "pause")
        image = push_image(anonymous_registry, "pause", "3.9", layers=[5_000])
        through.pull("pause", "3.9", image, "k8s")
        assert any("/manifests/" in p for _, p, _ in front.requests), "manifests were redirected too"
        assert {p.split("/")[-2] for _, p, _ in front.requests} >= {"manifests", "blobs"}
    finally:
        front.stop()
    anonymous_registry.stop()
    through.pull("pause", "3.9", image, "offline")

