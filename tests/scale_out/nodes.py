"""Regcache nodes on one bucket: state directories configured as an operator would, and S3 inspection.

Each node has its own state directory (its own SQLite database) configured through the engine's control
plane exactly as `regcache upstream add`, `regcache cache create` and `regcache storage set s3` do; the
S3 keys reach the nodes as ``env://`` secrets, the way a container or a systemd unit would give them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.fleet import HEARTBEAT_INTERVAL
from regcache.proxy.core.settings import make_s3_storage
from tests.helpers.commands import ServeProcess
from tests.s3.client import s3_client
from tests.s3.swift import SwiftS3Server

ACCESS_KEY_VAR = "REGCACHE_TEST_S3_ACCESS_KEY"
SECRET_KEY_VAR = "REGCACHE_TEST_S3_SECRET_KEY"
#: the fleet secret of the fleet tests, given to the nodes as ``env://REGCACHE_TEST_FLEET_SECRET``
FLEET_SECRET_VAR = "REGCACHE_TEST_FLEET_SECRET"
FLEET_SECRET = "the-fleet-secret-of-these-tests-0123456789"


def s3_env(swift: SwiftS3Server, secret_key: str | None = None) -> dict[str, str]:
    """The environment that gives a node the store's keys (``secret_key`` overrides the right one)."""
    return {ACCESS_KEY_VAR: swift.access_key, SECRET_KEY_VAR: secret_key or swift.secret_key}


def configure_node(home: Path, swift: SwiftS3Server, bucket: str, upstream_host: str, upstream_url: str,
                   rules: dict[str, str]) -> None:
    """One node's state: the upstream, ``rules`` (name -> upstream path, served under the same name), s3 storage."""
    control = ControlPlane.open(home)
    try:
        control.add_upstream(upstream_host, upstream_url, "anonymous")
        for name, path in rules.items():
            control.create_rule(f"{name.replace('/', '-')}-rule", f"{upstream_host}/{path}", name)
        control.set_storage(make_s3_storage(swift.endpoint, bucket, f"env://{ACCESS_KEY_VAR}",
                                            f"env://{SECRET_KEY_VAR}", region=swift.region))
    finally:
        control.close()


def configure_nodes(root: Path, swift: SwiftS3Server, bucket: str, upstream_host: str, upstream_url: str,
                    rules: dict[str, str], names: Iterable[str] = ("a", "b")) -> dict[str, Path]:
    """:func:`configure_node` for each of ``names`` (state directories under ``root``); name -> home."""
    homes = {name: root / name for name in names}
    for home in homes.values():
        configure_node(home, swift, bucket, upstream_host, upstream_url, rules)
    return homes


def _run(swift: SwiftS3Server, call) -> Any:
    async def main() -> Any:
        async with s3_client(swift) as client:
            return await call(client)

    return asyncio.run(main())


def bucket_keys(swift: SwiftS3Server, bucket: str) -> list[str]:
    """Every completed object's key in ``bucket``."""

    async def call(client) -> list[str]:
        keys: list[str] = []
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    return _run(swift, call)


def write_object(swift: SwiftS3Server, bucket: str, key: str, content: bytes) -> None:
    """Put ``content`` at ``key`` directly (what a faulty node or a person with the keys could do)."""

    async def call(client) -> None:
        await client.put_object(Bucket=bucket, Key=key, Body=content)

    _run(swift, call)


def read_object(swift: SwiftS3Server, bucket: str, key: str) -> bytes:
    """The whole content of the completed object at ``key``."""

    async def call(client) -> bytes:
        answer = await client.get_object(Bucket=bucket, Key=key)
        async with answer["Body"] as body:
            return await body.read()

    return _run(swift, call)


def pending_uploads(swift: SwiftS3Server, bucket: str) -> list[dict[str, Any]]:
    """The multipart uploads in ``bucket`` neither completed nor aborted."""

    async def call(client) -> list[dict[str, Any]]:
        return (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])

    return _run(swift, call)


def wait_for_image_in_bucket(swift: SwiftS3Server, bucket: str, digests: Iterable[str],
                             timeout: float = 20.0) -> tuple[float, set[str]]:
    """Seconds until every blob of ``digests`` is in the bucket and no upload is pending, and the keys then.

    Clients get a blob's last byte once it verified; the upload completes moments later. Raises
    AssertionError (naming what is missing) after ``timeout`` seconds.
    """
    started = time.monotonic()
    wanted = {blob_key(digest) for digest in digests}
    while True:
        keys = set(bucket_keys(swift, bucket))
        pending = pending_uploads(swift, bucket)
        if wanted <= keys and not pending:
            return time.monotonic() - started, keys
        if time.monotonic() - started > timeout:
            raise AssertionError(f"after {timeout:.0f} s bucket {bucket} lacks {sorted(wanted - keys)} "
                                 f"and has {len(pending)} pending upload(s)")
        time.sleep(0.05)


def blob_key(digest: str, prefix: str = "regcache") -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"{prefix}/blobs/{algorithm}/{encoded[:2]}/{encoded}"


def join(home: Path, port: int, secret_id: str = f"env://{FLEET_SECRET_VAR}") -> None:
    """Make the node of ``home``, listening on ``port``, a fleet member (its address and the fleet secret's id)."""
    control = ControlPlane.open(home)
    try:
        control.set_setting("fleet-address", f"http://127.0.0.1:{port}")
        control.set_setting("fleet-secret", secret_id)
    finally:
        control.close()


def wait_for_members(swift: SwiftS3Server, bucket: str, count: int, timeout: float = 20,
                     nodes: Iterable[tuple[str, int]] = ()) -> None:
    """Until ``count`` heartbeats are in the bucket and each node of ``nodes`` (base URL, how many members are
    configured as it is) sees that many live members (its regcache_fleet_members gauge): only then does it
    choose owners from the whole fleet. Without ``nodes``, every node is given time to read the others' beat."""
    deadline = time.monotonic() + timeout
    while len([k for k in bucket_keys(swift, bucket) if "/fleet/members/" in k]) < count:
        assert time.monotonic() < deadline, "the nodes did not heartbeat"
        time.sleep(0.2)
    urls = list(nodes)
    if not urls:
        time.sleep(HEARTBEAT_INTERVAL * 1.5)
    for url, alike in urls:
        while (seen := members_seen(url)) < alike:
            assert time.monotonic() < deadline, f"{url} sees {seen} of the {alike} fleet members configured as it"
            time.sleep(0.2)


def members_seen(url: str) -> float:
    """A node's regcache_fleet_members: the live members it chooses owners from."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r"^regcache_fleet_members ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def metric(node: ServeProcess, name: str) -> float:
    """The sum of a node's ``name`` series in its /metrics (every label set)."""
    text = httpx.get(f"{node.url}/metrics").text
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))
