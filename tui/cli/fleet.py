"""`regcache fleet status`: the nodes on this node's bucket, their heartbeats, and who owns a digest."""

from __future__ import annotations

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.fleet import MEMBER_TTL
from regcache.proxy.core.references import is_digest
from regcache.proxy.core.settings import FLEET_ADDRESS_SETTING
from regcache.tui.cli.common import Failure, emit, engine_command, output_option, say
from regcache.tui.output import Column

COLUMNS: list[Column] = [("NODE", "nodeId"), ("ADDRESS", "address"), ("VERSION", "version"),
                         ("HEARTBEAT", "heartbeat"), ("LIVE", "live"), ("SAME CONFIG", "sameConfiguration"),
                         ("OWNER", "owner")]


@click.group()
def fleet() -> None:
    """A fleet of nodes on one bucket (s3 storage, the fleet-address and fleet-secret settings)."""


@fleet.command("status")
@click.option("--digest", metavar="DIGEST", help="Also say which live member downloads this digest for the fleet.")
@output_option
@engine_command
def fleet_status(control: ControlPlane, digest: str | None, fmt: str) -> None:
    """Members (from their heartbeats in the bucket): address, version, last heartbeat, whether they are live
    and configured as this node (only those share downloads), and the owner of --digest."""
    import anyio

    from regcache.proxy.storage.fleet import read_fleet_in

    if digest is not None and not is_digest(digest):
        raise ValidationError(f"--digest must be sha256:HEX or sha512:HEX, not {digest[:80]!r}", field="digest")
    settings = control.fleet_settings()
    if settings is None:
        raise Failure("this node's storage is not a bucket: a fleet shares an s3 bucket (`regcache storage set s3`)")
    view = anyio.run(read_fleet_in, settings.storage, control.secrets, settings.node_id, settings.fingerprint)
    owner = view.owner(digest) if digest else None
    rows = [{"nodeId": m.member.node_id + (" (this node)" if view.is_me(m) else ""),
             "address": m.member.address, "version": m.member.version, "heartbeat": f"{m.age:.0f}s ago",
             "live": "yes" if m.live else f"no (over {MEMBER_TTL:.0f}s)",
             "sameConfiguration": "yes" if view.alike(m) else "no", "owner":
             "yes" if owner == m.member.node_id else ""} for m in view.members]
    if not rows:
        say("no fleet member has a heartbeat in the bucket" + ("" if settings.address else
            f" (this node joins one once {FLEET_ADDRESS_SETTING} and fleet-secret are set and it restarts)"))
    emit(rows, COLUMNS, fmt)
