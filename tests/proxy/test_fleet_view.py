"""One reader of the fleet for `regcache fleet status` and the TUI's Overview: through the engine's connection to
the bucket (the TUI's embedded proxy) or a connection of its own (the CLI), the same heartbeats (Swift s3api)."""

from __future__ import annotations

import anyio

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.fleet import Member
from regcache.proxy.core.settings import FLEET_NODE_ID_SETTING, make_s3_storage
from regcache.proxy.jobs.operations import Operations
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.storage.fleet import FleetMembership, read_fleet_in
from regcache.proxy.storage.objectstore import ObjectStore
from tests.scale_out.nodes import ACCESS_KEY_VAR, SECRET_KEY_VAR, s3_env


def test_the_engine_and_the_cli_read_the_same_fleet(home, keyring_env, swift_s3, s3_bucket, monkeypatch):
    for name, value in s3_env(swift_s3).items():
        monkeypatch.setenv(name, value)
    config = make_s3_storage(swift_s3.endpoint, s3_bucket, f"env://{ACCESS_KEY_VAR}", f"env://{SECRET_KEY_VAR}",
                             region=swift_s3.region)
    control = ControlPlane.open(home)
    try:
        assert control.fleet_settings() is None  # filesystem storage: no fleet
        control.set_storage(config)
        assert not control.fleet_settings().configured
        control.set_setting("fleet-address", "http://127.0.0.1:5999")
        control.set_setting("fleet-secret", "env://FLEET_SECRET")
        control.store.set_setting(FLEET_NODE_ID_SETTING, "node-a")
        settings = control.fleet_settings()
    finally:
        control.close()
    assert settings.configured and settings.node_id == "node-a"

    async def beat() -> None:
        async with ObjectStore(config, SecretResolver()) as objects:
            for member in (Member("node-a", "http://127.0.0.1:5999", settings.fingerprint, "0.4.0", 0),
                           Member("node-b", "http://127.0.0.1:6000", settings.fingerprint, "0.4.0", 0),
                           Member("node-c", "http://127.0.0.1:6001", "another-configuration", "0.4.0", 0)):
                await FleetMembership(objects, member).beat()

    anyio.run(beat)
    alone = anyio.run(read_fleet_in, config, SecretResolver(), settings.node_id, settings.fingerprint)
    engine = Operations.run_alone(home, None, lambda ops: ops.fleet(settings))
    for view in (alone, engine):
        assert [m.member.node_id for m in view.members] == ["node-a", "node-b", "node-c"]
        assert all(m.live for m in view.members) and view.me is not None and view.me.member.node_id == "node-a"
        assert [view.alike(m) for m in view.members] == [True, True, False]
        owners = {view.owner(f"sha256:{i:064x}") for i in range(32)}
        assert owners == {"node-a", "node-b"}  # a member configured otherwise owns nothing for this node
