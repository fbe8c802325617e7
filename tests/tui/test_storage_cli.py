"""`regcache storage` and the bucket side of `regcache gc`, against a real S3-compatible store (Swift).

Refusals are one line, exit 1 and leave ``state.db`` unchanged; the setting holds secret *ids*, and
neither output nor error messages ever show the access key or the secret key.
"""

from __future__ import annotations

import html
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.settings import make_s3_storage
from regcache.tui.backend import Backend
from tests.helpers.cli import cli, ok
from tests.helpers.state import dump_database
from tests.s3.client import s3_client
from tests.s3.swift import SwiftS3Server

from .conftest import make_app

ACCESS_ID = "env://REGCACHE_TEST_S3_ACCESS"
SECRET_ID = "env://REGCACHE_TEST_S3_SECRET"
WRONG_SECRET = "wrong-S3-secret-value-7f3a"
DIGEST = "sha256:" + "c" * 64


def set_s3(endpoint: str, bucket: str, *extra: str, secret_id: str = SECRET_ID) -> list[str]:
    return ["storage", "set", "s3", "--endpoint", endpoint, "--bucket", bucket, "--access-key-id", ACCESS_ID,
            "--secret-access-key", secret_id, *extra]


def shown() -> dict[str, Any]:
    return json.loads(ok("storage", "show", "-o", "json").stdout)


@pytest.fixture
def s3_env(swift_s3: SwiftS3Server, monkeypatch: pytest.MonkeyPatch) -> SwiftS3Server:
    """The store's keys in the environment, behind the env:// secret ids the tests configure."""
    monkeypatch.setenv(ACCESS_ID.removeprefix("env://"), swift_s3.access_key)
    monkeypatch.setenv(SECRET_ID.removeprefix("env://"), swift_s3.secret_key)
    return swift_s3


@pytest.fixture
def s3_storage(home: Path, s3_env: SwiftS3Server, s3_bucket: str) -> Iterator[str]:
    """``storage set s3`` on a fresh bucket (checked against the store); yields the bucket."""
    ok(*set_s3(s3_env.endpoint, s3_bucket, "--region", s3_env.region))
    yield s3_bucket


# -- without a store -------------------------------------------------------------------------------

def test_default_is_filesystem_and_s3_holds_ids_only(home):
    assert shown() == {"kind": "filesystem"}
    result = ok("storage", "show")
    assert result.stdout.splitlines()[2].split() == ["kind", "filesystem"]
    assert "next start of `regcache serve`" in result.stderr

    saved = ok(*set_s3("https://s3.example.com/", "team-cache", "--region", "eu-west-1", "--virtual-hosted",
                       "--prefix", "nodes/a", "--no-check"))
    assert "s3 bucket team-cache at https://s3.example.com" in saved.stderr
    assert shown() == {"kind": "s3", "endpoint": "https://s3.example.com", "bucket": "team-cache",
                       "region": "eu-west-1", "addressing": "virtual", "prefix": "nodes/a",
                       "accessKeyIdSecretIdentifier": ACCESS_ID, "secretAccessKeySecretIdentifier": SECRET_ID}
    table = ok("storage", "show").stdout
    assert re.search(r"^secret-access-key +env://REGCACHE_TEST_S3_SECRET$", table, re.M), table
    assert "access-key-id\tenv://REGCACHE_TEST_S3_ACCESS" in ok("storage", "show", "-o", "tsv").stdout

    ok("storage", "set", "filesystem")
    assert shown() == {"kind": "filesystem"}


SECRET_LOOKING = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

REFUSALS = [
    pytest.param(set_s3("ftp://s3.example.com", "team-cache", "--no-check"), "must be an http:// or https:// URL",
                 id="endpoint scheme"),
    pytest.param(set_s3("s3.example.com", "team-cache", "--no-check"), "must be an http:// or https:// URL",
                 id="endpoint without scheme"),
    pytest.param(set_s3("https://AKIDEXAMPLE:s3cr3t-in-url@s3.example.com", "team-cache", "--no-check"),
                 "must not contain credentials", id="credentials in the endpoint"),
    pytest.param(set_s3("https://s3.example.com", "Team_Cache", "--no-check"), "bucket name 'Team_Cache'",
                 id="bucket name"),
    pytest.param(set_s3("https://s3.example.com", "ab", "--no-check"), "bucket name 'ab'", id="bucket too short"),
    pytest.param(set_s3("https://s3.example.com", "team-cache", "--region", "EU West", "--no-check"),
                 "region 'EU West'", id="region"),
    pytest.param(set_s3("https://s3.example.com", "team-cache", "--prefix", "a/../b", "--no-check"),
                 "prefix 'a/../b'", id="prefix"),
    pytest.param(set_s3("https://s3.example.com", "team-cache", "--no-check", secret_id=SECRET_LOOKING),
                 "--secret-access-key must be a secret id", id="secret value instead of its id"),
    pytest.param(set_s3("http://127.0.0.1:1", "team-cache", secret_id="env://REGCACHE_TEST_NO_SUCH_VARIABLE"),
                 "secret env://REGCACHE_TEST_NO_SUCH_VARIABLE not found", id="secret not set"),
]


@pytest.mark.parametrize(("command", "expected"), REFUSALS)
def test_refused_storage_changes_nothing(home, monkeypatch, command, expected):
    monkeypatch.setenv(ACCESS_ID.removeprefix("env://"), "AKIDEXAMPLE")
    monkeypatch.setenv(SECRET_ID.removeprefix("env://"), SECRET_LOOKING)
    ok("storage", "show")  # creates state.db
    before = dump_database(home)
    result = cli(*command)
    assert result.exit_code == 1
    assert result.stdout == ""
    line, = result.stderr.splitlines()
    assert line.startswith("error: ") and expected in line, line
    for secret in ("AKIDEXAMPLE", "s3cr3t-in-url", SECRET_LOOKING):
        assert secret not in line
    assert dump_database(home) == before


def test_unreachable_store_is_refused(home, monkeypatch):
    monkeypatch.setenv(ACCESS_ID.removeprefix("env://"), "AKIDEXAMPLE")
    monkeypatch.setenv(SECRET_ID.removeprefix("env://"), SECRET_LOOKING)
    ok("storage", "show")
    before = dump_database(home)
    result = cli(*set_s3("http://127.0.0.1:1", "team-cache"))
    assert result.exit_code == 1
    line, = result.stderr.splitlines()
    assert line.startswith("error: cannot reach the object store at http://127.0.0.1:1")
    assert dump_database(home) == before
    assert shown() == {"kind": "filesystem"}


def test_gc_output_for_filesystem_is_unchanged(home):
    report = json.loads(ok("gc", "--dry-run", "-o", "json").stdout)
    assert set(report) == {"dryRun", "evicted", "bytesFreed", "cacheBytes", "maxSize", "expiredRepositories"}
    assert "multipart" not in ok("gc").stderr


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_overview_shows_the_storage_at_80x24(home, keyring_env):
    backend = Backend.open(home)
    try:
        backend.control.set_storage(make_s3_storage("http://127.0.0.1:9000", "regcache", ACCESS_ID, SECRET_ID))
        app = make_app(backend)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            screen = html.unescape(re.sub(r"<[^>]+>", "", app.export_screenshot())).replace("\xa0", " ")
    finally:
        backend.close()
    assert re.search(r"Storage +s3 bucket regcache at http://127\.0\.0\.1:9000 *$", screen, re.M), screen
    assert "REGCACHE_TEST_S3" not in screen


# -- against the Swift store -----------------------------------------------------------------------

def test_set_s3_checks_the_bucket_before_saving(home, s3_env, s3_bucket, monkeypatch):
    ok("storage", "show")
    before = dump_database(home)
    monkeypatch.setenv("REGCACHE_TEST_S3_WRONG", WRONG_SECRET)
    refused = cli(*set_s3(s3_env.endpoint, s3_bucket, secret_id="env://REGCACHE_TEST_S3_WRONG"))
    assert refused.exit_code == 1
    line, = refused.stderr.splitlines()
    assert line.startswith("error: ") and s3_env.endpoint in line, line
    assert "env://REGCACHE_TEST_S3_WRONG" in line  # which secret to check, by id
    for secret in (WRONG_SECRET, s3_env.access_key, s3_env.secret_key):
        assert secret not in refused.output
    missing = cli(*set_s3(s3_env.endpoint, "no-such-bucket-here"))
    assert missing.exit_code == 1 and "no-such-bucket-here does not exist" in missing.stderr
    assert dump_database(home) == before

    saved = ok(*set_s3(s3_env.endpoint, s3_bucket, "--region", s3_env.region))
    assert f"s3 bucket {s3_bucket} at {s3_env.endpoint}" in saved.stderr
    record = shown()
    assert (record["kind"], record["bucket"], record["endpoint"], record["addressing"]) == (
        "s3", s3_bucket, s3_env.endpoint, "path")
    state = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert s3_env.secret_key.encode() not in state and s3_env.access_key.encode() not in state


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


async def start_upload(server: SwiftS3Server, bucket: str, key: str, pid: int) -> str:
    """A multipart upload with regcache's owner record naming ``pid`` on this host."""
    async with s3_client(server) as s3:
        upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        owner = {"host": socket.gethostname(), "pid": pid, "key": key,
                 "started": datetime.now(timezone.utc).isoformat()}
        await s3.put_object(Bucket=bucket, Key=f"regcache/uploads/{upload_id.replace('/', '_')}",
                            Body=json.dumps(owner).encode(), ContentType="application/json")
        return upload_id


async def pending_keys(server: SwiftS3Server, bucket: str) -> set[str]:
    async with s3_client(server) as s3:
        return {u["Key"] for u in (await s3.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])}


def test_gc_aborts_uploads_of_dead_nodes(s3_storage, s3_env):
    dead_key, live_key = "regcache/blobs/sha256/de/" + "de" * 32, "regcache/blobs/sha256/11/" + "11" * 32
    anyio.run(start_upload, s3_env, s3_storage, dead_key, dead_pid())
    anyio.run(start_upload, s3_env, s3_storage, live_key, os.getpid())  # this process: alive

    planned = json.loads(ok("gc", "--dry-run", "-o", "json").stdout)
    assert planned["dryRun"] is True
    assert [u["key"] for u in planned["abortedUploads"]] == [dead_key]
    assert "is gone" in planned["abortedUploads"][0]["reason"]
    assert anyio.run(pending_keys, s3_env, s3_storage) == {dead_key, live_key}

    done = ok("gc")
    assert dead_key in done.stdout and "is gone" in done.stdout
    assert "aborted 1 stale multipart upload in" in done.stderr
    assert anyio.run(pending_keys, s3_env, s3_storage) == {live_key}
    assert json.loads(ok("gc", "-o", "json").stdout)["abortedUploads"] == []


def test_gc_deletes_evicted_blobs_from_the_bucket(home, s3_storage, s3_env):
    key = f"regcache/blobs/sha256/cc/{'c' * 64}"

    async def put() -> None:
        async with s3_client(s3_env) as s3:
            await s3.put_object(Bucket=s3_storage, Key=key, Body=b"x" * 2048)

    async def exists() -> bool:
        async with s3_client(s3_env) as s3:
            listed = await s3.list_objects_v2(Bucket=s3_storage, Prefix=key)
            return listed.get("KeyCount", 0) > 0

    anyio.run(put)
    control = ControlPlane.open(home)
    try:
        control.store.put_blob(DIGEST, 2048, f"s3:{key}", datetime(2026, 1, 1, tzinfo=timezone.utc))
    finally:
        control.close()
    ok("settings", "set", "max-size", "1KiB")
    report = json.loads(ok("gc", "--min-idle", "0s", "-o", "json").stdout)
    assert [e["digest"] for e in report["evicted"]] == [DIGEST] and report["bytesFreed"] == 2048
    assert not anyio.run(exists)
    assert json.loads(ok("gc", "--dry-run", "-o", "json").stdout)["evicted"] == []
