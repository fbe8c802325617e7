"""FleetMembership: this node's heartbeat in the shared bucket, and the live members it reads from there.

Each node writes ``fleet/members/<node id>.json`` every :data:`HEARTBEAT_INTERVAL` seconds with a beat
counter, and reads every member's. A member is live while its counter keeps changing (seen on this
node's own monotonic clock, so no clocks need to agree) and at most :data:`MEMBER_TTL` seconds passed
since it last did; a node stopping cleanly deletes its heartbeat, so the others drop it at once. Only
members with this node's configuration fingerprint count: the others download on their own.

The bucket is the only thing shared: no member is special, and a node that cannot read the bucket keeps
what it last knew until the members expire (then it downloads on its own).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import anyio
from anyio.abc import TaskStatus

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.fleet import HEARTBEAT_INTERVAL, MEMBER_TTL, Member, ranked
from regcache.proxy.core.settings import S3Storage, StorageError
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.storage.objectstore import ObjectStore

log = logging.getLogger("regcache.fleet")

#: heartbeats read per round at most (a fleet is tens of nodes, not thousands)
MAX_MEMBERS = 256


class FleetMembership:
    """This node (``me``) in the fleet of nodes sharing ``objects``' bucket."""

    def __init__(self, objects: ObjectStore, me: Member, clock: Callable[[], float] = time.monotonic) -> None:
        self.objects = objects
        self.me = me
        self._clock = clock
        #: node id -> (its last heartbeat, when its beat was last seen to change)
        self._seen: dict[str, tuple[Member, float]] = {}
        #: node id -> until when it is not asked (it failed a peer request)
        self._failed: dict[str, float] = {}
        self.last_read: float | None = None

    # -- who is in -----------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """The live members sharing this node's configuration, this node included."""
        now = self._clock()
        live = [m for m, changed in self._seen.values() if now - changed <= MEMBER_TTL
                and m.fingerprint == self.me.fingerprint and m.node_id != self.me.node_id]
        return [self.me, *live]

    def others(self) -> list[tuple[Member, float]]:
        """Every other heartbeat read (live or not, any fingerprint) and seconds since its beat changed."""
        now = self._clock()
        return [(m, now - changed) for m, changed in self._seen.values() if m.node_id != self.me.node_id]

    def owner(self, key: str) -> Member:
        """Who downloads ``key`` for the fleet: the highest-ranked live member not recently failed (else me)."""
        now = self._clock()
        for member in ranked(key, self.members()):
            if member.node_id == self.me.node_id or self._failed.get(member.node_id, 0) <= now:
                return member
        return self.me

    def passed_over(self, key: str) -> bool:
        """Whether the member ranked first for ``key`` is another one, passed over because it failed lately
        (this node, or the next-ranked, then fetches what that member would have: counted as such)."""
        first = next(iter(ranked(key, self.members())), None)
        return (first is not None and first.node_id != self.me.node_id
                and self._failed.get(first.node_id, 0) > self._clock())

    def failed(self, node_id: str) -> None:
        """``node_id`` did not answer a peer request: ask the next-ranked member instead, for a while."""
        self._failed[node_id] = self._clock() + MEMBER_TTL

    def set_fingerprint(self, fingerprint: str) -> None:
        """The configuration changed: announce it with the next heartbeat."""
        if fingerprint != self.me.fingerprint:
            self.me = replace(self.me, fingerprint=fingerprint)

    # -- heartbeats ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Beat and read until cancelled; then leave (delete this node's heartbeat)."""
        await self.beat()
        await self.read()
        task_status.started()
        try:
            while True:
                await anyio.sleep(HEARTBEAT_INTERVAL)
                await self.beat()
                await self.read()
        finally:
            with anyio.move_on_after(2, shield=True):
                try:
                    await self.objects.delete(self.objects.member_key(self.me.node_id))
                except StorageError as exc:
                    log.warning("could not leave the fleet cleanly (the others drop this node in %.0f s): %s",
                                MEMBER_TTL, exc)

    async def beat(self) -> None:
        self.me = replace(self.me, beat=self.me.beat + 1)
        try:
            await self.objects.write(self.objects.member_key(self.me.node_id), self.me.to_json(), "application/json")
        except StorageError as exc:
            log.warning("fleet heartbeat not written: %s", exc)

    async def read(self) -> None:
        """Read every heartbeat; a member whose beat changed is seen alive now."""
        try:
            found = await heartbeats(self.objects)
        except StorageError as exc:
            log.warning("fleet members not read (keeping what was known): %s", exc)
            return
        now = self._clock()
        listed: set[str] = set()
        for member, _ in found:
            listed.add(member.node_id)
            previous = self._seen.get(member.node_id)
            if previous is None or previous[0] != member:
                self._seen[member.node_id] = (member, now)
        for gone in set(self._seen) - listed:  # left cleanly (or its heartbeat was removed): not asked again
            del self._seen[gone]
        self.last_read = now


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """A heartbeat as `regcache fleet status` shows it: the member, and seconds since the bucket stored it."""

    member: Member
    age: float

    @property
    def live(self) -> bool:
        return self.age <= MEMBER_TTL


async def heartbeats(objects: ObjectStore) -> list[tuple[Member, datetime]]:
    """Every heartbeat in the bucket and when the bucket stored it (what is not a heartbeat is passed over)."""
    found: list[tuple[Member, datetime]] = []
    for key in await objects.list_keys(objects.member_key(), MAX_MEMBERS):
        stored = await objects.read(key)
        if stored is None:
            continue
        try:
            found.append((Member.from_json(stored.content), stored.last_modified))
        except ValidationError:
            continue
    return found


async def read_members(objects: ObjectStore, now: datetime | None = None) -> list[MemberStatus]:
    """Every heartbeat in the bucket, with its age by the bucket's clock (the nodes' clocks are in sync: NTP)."""
    now = now or datetime.now(timezone.utc)
    found = [MemberStatus(member, max((now - stored_at).total_seconds(), 0.0))
             for member, stored_at in await heartbeats(objects)]
    return sorted(found, key=lambda s: s.member.node_id)


@dataclass(frozen=True, slots=True)
class FleetView:
    """The fleet as one node sees it (`regcache fleet status`, the TUI's Overview): every heartbeat in the
    bucket, which one is this node's, and which members share this node's configuration."""

    #: this node's id (None: it never joined: made at its first start in a fleet)
    node_id: str | None
    #: this node's configuration fingerprint: only members with the same one share downloads with it
    fingerprint: str
    #: every heartbeat read, by node id
    members: tuple[MemberStatus, ...]

    def is_me(self, status: MemberStatus) -> bool:
        return status.member.node_id == self.node_id

    def alike(self, status: MemberStatus) -> bool:
        """Whether ``status`` is configured as this node (only then does it fetch for it)."""
        return status.member.fingerprint == self.fingerprint

    @property
    def live(self) -> list[MemberStatus]:
        return [m for m in self.members if m.live]

    @property
    def me(self) -> MemberStatus | None:
        """This node's own heartbeat (None: not in the bucket: this node is not serving in the fleet)."""
        return next((m for m in self.members if self.is_me(m)), None)

    def owner(self, digest: str) -> str | None:
        """The node id of the live member configured as this node that downloads ``digest`` for the fleet."""
        alike = [m.member for m in self.members if m.live and self.alike(m)]
        return ranked(digest, alike)[0].node_id if alike else None


async def read_fleet(objects: ObjectStore, node_id: str | None, fingerprint: str,
                     now: datetime | None = None) -> FleetView:
    """The fleet in ``objects``' bucket as node ``node_id`` (configured as ``fingerprint``) sees it."""
    return FleetView(node_id, fingerprint, tuple(await read_members(objects, now)))


async def read_fleet_in(config: S3Storage, secrets: SecretResolver, node_id: str | None,
                        fingerprint: str) -> FleetView:
    """:func:`read_fleet` through a connection of its own to the bucket ``config`` names (no engine running)."""
    async with ObjectStore(config, secrets) as objects:
        return await read_fleet(objects, node_id, fingerprint)
