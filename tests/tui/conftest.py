"""Fixtures for the TUI: an app over a temporary state directory, optionally filled with fixed data."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from regcache.proxy.core.models import (
    CacheRule,
    CredentialHealth,
    CredentialSet,
    HealthStatus,
    PullEvent,
)
from regcache.tui.app import RegcacheApp
from regcache.tui.backend import Backend, ProxyStatus

T0 = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
RUNNING = ProxyStatus("127.0.0.1:5000", "running")


@pytest.fixture
def backend(home, keyring_env) -> Iterator[Backend]:
    backend = Backend.open(home)
    yield backend
    backend.close()


def populate(backend: Backend) -> None:
    """Fixed rules, credential sets, cached repositories and pull events (for snapshots)."""
    store = backend.control.store
    from regcache.proxy.core.models import AuthPolicy

    with store.transaction():
        store.upsert_upstream("harbor.internal:8443", "https://harbor.internal:8443", AuthPolicy.BOTH, "custom")
        store.upsert_credential_set(CredentialSet(
            "hub-creds", "docker.io", "keyring://regcache/hub-user", "keyring://regcache/hub-token",
            CredentialHealth(HealthStatus.HEALTHY, None, None, T0), T0))
        store.upsert_credential_set(CredentialSet(
            "ghcr-creds", "ghcr.io", "env://GH_USER", "env://GH_TOKEN",
            CredentialHealth(HealthStatus.UNHEALTHY, "UpstreamAuthFailed",
                             "upstream ghcr.io: refused the credentials", T0), T0))
        for i, (name, source, target, cred) in enumerate((
                ("ubuntu", "docker.io/library/ubuntu", "ubuntu", "hub-creds"),
                ("all-mcr", "mcr.microsoft.com/*", "mcr/*", None),
                ("team-ghcr", "ghcr.io/acme/*", "team/*", "ghcr-creds"),
        )):
            store.insert_cache_rule(CacheRule(name, source, target, cred, T0.replace(minute=i),
                                              sync_tags="semver:>=22.04" if name == "ubuntu" else None))
    from datetime import timedelta

    from regcache.proxy.core.tokens import ClientToken

    store.insert_client_token(ClientToken("ci-pull", ("team/*", "ubuntu"), "scrypt$1$1$1$AA==$AA==", T0,
                                          T0.replace(year=2099), T0 + timedelta(hours=2)))
    store.insert_client_token(ClientToken("laptop-dev", ("*",), "scrypt$1$1$1$AA==$AA==", T0))
    store.record_rate_limit("docker.io", "hub-creds", "200;w=21600", "143;w=21600", 2)
    store.record_repository("ubuntu", "ubuntu", "docker.io/library/ubuntu", T0)
    store.record_repository("team/api", "team-ghcr", "ghcr.io/acme/api", T0)
    store.put_blob("sha256:" + "a" * 64, 29_360_128, "blobs/sha256/aa/" + "a" * 64, T0)
    hub = "credential-set/hub-creds@0123456789abcdef/docker.io/library/ubuntu"  # a source (docs/security.md)
    store.link("ubuntu", hub, "sha256:" + "a" * 64, "blob")
    store.set_tag("ubuntu", hub, "22.04", "sha256:" + "b" * 64, T0)
    docker = "docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.8.0 os/linux arch/amd64 " \
             "UpstreamClient(Docker-Client/27.3.1 \\(linux\\))"
    podman = "podman/5.2.2"
    events = [
        PullEvent("10.0.0.7", "GET", "manifest", "ubuntu", "22.04", "miss", 200, "ubuntu", 1_024, 212.0, None, T0,
                  docker),
        PullEvent("10.0.0.7", "GET", "blob", "ubuntu", "sha256:" + "a" * 64, "miss", 200, "ubuntu", 29_360_128,
                  1_870.5, None, T0, docker),
        PullEvent("10.0.0.8", "GET", "manifest", "ubuntu", "22.04", "hit", 200, "ubuntu", 1_024, 3.2, None, T0,
                  "containerd/1.7.22"),
        PullEvent("10.0.0.8", "GET", "blob", "ubuntu", "sha256:" + "a" * 64, "hit", 200, "ubuntu", 29_360_128,
                  95.1, None, T0, "containerd/1.7.22"),
        PullEvent("10.0.0.9", "GET", "manifest", "team/api", "1.4", "stale", 200, "team-ghcr", 2_048, 5.0,
                  "upstream ghcr.io: unreachable (connection failed)", T0, podman),
        PullEvent("10.0.0.9", "GET", "manifest", "team/web", "2.0", "error", 401, "team-ghcr", 0, 48.0,
                  "upstream ghcr.io: refused the credentials of credential set 'ghcr-creds'", T0, podman),
    ]
    from regcache.proxy.pull.events import event_row

    store.insert_events([event_row(e) for e in events])


@pytest.fixture
def filled_backend(backend: Backend) -> Backend:
    populate(backend)
    return backend


#: "now" for the app in tests: a few minutes after the fixed events, so the Overview's last hour holds them
NOW = T0.replace(minute=40, second=5)


def make_app(backend: Backend, status: ProxyStatus = RUNNING) -> RegcacheApp:
    return RegcacheApp(backend, status=status, clock=lambda: NOW)


#: a fleet of three as its heartbeats say (fixed ages: the snapshots do not move): this node, a live peer, and
#: a node configured otherwise that stopped beating
FLEET_NODE = "a1b2c3d4e5f6a7b8"


def fixed_fleet():
    from regcache.proxy.core.fleet import Member
    from regcache.proxy.storage.fleet import FleetView, MemberStatus

    return FleetView(FLEET_NODE, "fingerprint-1", (
        MemberStatus(Member("9f8e7d6c5b4a3f2e", "http://10.0.0.13:5000", "fingerprint-0", "0.3.9", 40), 41.2),
        MemberStatus(Member(FLEET_NODE, "http://10.0.0.11:5000", "fingerprint-1", "0.4.0", 120), 0.8),
        MemberStatus(Member("5e6f7a8b9c0d1e2f", "http://10.0.0.12:5000", "fingerprint-1", "0.4.0", 118), 1.6),
    ))


def in_a_fleet(backend: Backend, source=lambda backend: fixed_fleet()) -> Backend:
    """``backend``'s state on s3 storage in a fleet, its members read from ``source`` (fixed by default)."""
    from regcache.proxy.core.settings import make_s3_storage

    control = backend.control
    control.set_storage(make_s3_storage("https://s3.example.com", "regcache-blobs", "env://S3_ACCESS",
                                        "env://S3_SECRET"))
    control.set_setting("fleet-address", "http://10.0.0.11:5000")
    control.set_setting("fleet-secret", "env://FLEET_SECRET")
    return Backend(control, fleet_source=source)
