"""The S3-compatible test store (Swift + s3api) works through the S3 client regcache will use (aiobotocore).

What the scale-out feature relies on: buckets addressed path-style, a
streaming multipart upload from an async iterator in 5 MiB parts, abort that
leaves nothing visible, listing and aborting in-progress uploads (``regcache
gc``), HEAD, ranged and streamed GET, delete.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.s3.client import s3_client
from tests.s3.swift import SwiftS3Server

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
PART_SIZE = 5 * MiB  # Swift's minimum part size (all parts but the last)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiobotocore runs on asyncio (aiohttp) only


async def chunks(total: int, size: int = MiB, seed: str = "") -> AsyncIterator[bytes]:
    """``total`` deterministic pseudo-random bytes, ``size`` at a time (an upstream blob stream)."""
    sent = index = 0
    while sent < total:
        block = hashlib.sha256(f"{seed}{index}".encode()).digest()
        n = min(size, total - sent)
        yield (block * (n // len(block) + 1))[:n]
        sent += n
        index += 1


async def upload_stream(s3: Any, bucket: str, key: str, stream: AsyncIterator[bytes]) -> tuple[dict[str, Any], str]:
    """Multipart-upload ``stream`` in ``PART_SIZE`` parts; return the Complete answer and the sha256."""
    upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    parts: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    buffer = bytearray()

    async def send(body: bytes) -> None:
        number = len(parts) + 1
        answer = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    try:
        async for chunk in stream:
            digest.update(chunk)
            buffer += chunk
            while len(buffer) >= PART_SIZE:
                await send(bytes(buffer[:PART_SIZE]))
                del buffer[:PART_SIZE]
        if buffer or not parts:
            await send(bytes(buffer))
        completed = await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return completed, digest.hexdigest()


async def error_code(call: Any) -> str:
    """The S3 error code (or HTTP status for HEAD) ``call`` fails with."""
    with pytest.raises(ClientError) as caught:
        await call
    return str(caught.value.response["Error"]["Code"])


def test_server_attributes(swift_s3: SwiftS3Server) -> None:
    assert swift_s3.running
    assert swift_s3.endpoint == f"http://127.0.0.1:{swift_s3.ports['proxy']}"
    assert (swift_s3.access_key, swift_s3.secret_key, swift_s3.region) == ("test:tester", "testing", "us-east-1")
    assert swift_s3.startup_seconds is not None and swift_s3.startup_seconds < 30


async def test_buckets_path_style(swift_s3: SwiftS3Server, s3_bucket: str) -> None:
    async with s3_client(swift_s3) as s3:
        await s3.head_bucket(Bucket=s3_bucket)
        created = f"{s3_bucket}-s3"
        await s3.create_bucket(Bucket=created)
        try:
            names = {b["Name"] for b in (await s3.list_buckets())["Buckets"]}
            assert {s3_bucket, created} <= names
        finally:
            await s3.delete_bucket(Bucket=created)
        assert await error_code(s3.head_bucket(Bucket=created)) == "404"


async def test_streaming_multipart_upload_then_reads(swift_s3: SwiftS3Server, s3_bucket: str) -> None:
    total = 12 * MiB
    async with s3_client(swift_s3) as s3:
        completed, sha256 = await upload_stream(s3, s3_bucket, "blobs/sha256/ab/big", chunks(total, seed="big"))
        assert completed["ETag"].strip('"').endswith("-3")  # 5 MiB + 5 MiB + 2 MiB

        head = await s3.head_object(Bucket=s3_bucket, Key="blobs/sha256/ab/big")
        assert head["ContentLength"] == total
        assert head["ETag"] == completed["ETag"]

        # a range across the first part boundary
        ranged = await s3.get_object(Bucket=s3_bucket, Key="blobs/sha256/ab/big", Range="bytes=5242870-5242889")
        assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert ranged["ContentRange"] == f"bytes 5242870-5242889/{total}"
        expected = b"".join([c async for c in chunks(total, seed="big")])[5242870:5242890]
        assert await ranged["Body"].read() == expected

        got = await s3.get_object(Bucket=s3_bucket, Key="blobs/sha256/ab/big")
        digest, size = hashlib.sha256(), 0
        async for piece in got["Body"].iter_chunks(256 * 1024):
            digest.update(piece)
            size += len(piece)
        assert (size, digest.hexdigest()) == (total, sha256)

        await s3.delete_object(Bucket=s3_bucket, Key="blobs/sha256/ab/big")
        assert await error_code(s3.head_object(Bucket=s3_bucket, Key="blobs/sha256/ab/big")) == "404"
    assert swift_s3.segment_names(s3_bucket) == []  # deleting the object deleted its parts


async def test_abort_leaves_nothing_visible(swift_s3: SwiftS3Server, s3_bucket: str) -> None:
    async def broken_upstream() -> AsyncIterator[bytes]:
        async for chunk in chunks(8 * MiB, seed="aborted"):
            yield chunk
        raise ConnectionResetError("upstream went away")

    async with s3_client(swift_s3) as s3:
        with pytest.raises(ConnectionResetError):
            await upload_stream(s3, s3_bucket, "aborted", broken_upstream())  # one part sent, then aborted

        assert await error_code(s3.head_object(Bucket=s3_bucket, Key="aborted")) == "404"
        assert (await s3.list_objects_v2(Bucket=s3_bucket))["KeyCount"] == 0
        assert not (await s3.list_multipart_uploads(Bucket=s3_bucket)).get("Uploads")
    assert swift_s3.object_names(s3_bucket) == []
    assert swift_s3.segment_names(s3_bucket) == []  # the 5 MiB part is gone too


async def test_gc_lists_and_aborts_in_progress_uploads(swift_s3: SwiftS3Server, s3_bucket: str) -> None:
    async with s3_client(swift_s3) as s3:
        started = {}
        for key in ("uploads/a", "uploads/b"):
            upload_id = (await s3.create_multipart_upload(Bucket=s3_bucket, Key=key))["UploadId"]
            started[key] = upload_id
        await s3.upload_part(
            Bucket=s3_bucket, Key="uploads/a", UploadId=started["uploads/a"], PartNumber=1, Body=b"x" * PART_SIZE
        )

        listed = (await s3.list_multipart_uploads(Bucket=s3_bucket, Prefix="uploads/"))["Uploads"]
        assert {u["Key"]: u["UploadId"] for u in listed} == started
        assert all(u["Initiated"].tzinfo is not None for u in listed)  # what gc compares to its cut-off
        parts = await s3.list_parts(Bucket=s3_bucket, Key="uploads/a", UploadId=started["uploads/a"])
        assert [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, PART_SIZE)]

        for upload in listed:  # what `regcache gc` does with stale uploads
            await s3.abort_multipart_upload(Bucket=s3_bucket, Key=upload["Key"], UploadId=upload["UploadId"])

        assert not (await s3.list_multipart_uploads(Bucket=s3_bucket)).get("Uploads")
        assert (await s3.list_objects_v2(Bucket=s3_bucket))["KeyCount"] == 0
    assert swift_s3.segment_names(s3_bucket) == []


async def test_small_objects_batch_delete_and_quirks(swift_s3: SwiftS3Server, s3_bucket: str) -> None:
    async with s3_client(swift_s3) as s3:
        for index in range(3):
            await s3.put_object(Bucket=s3_bucket, Key=f"small/{index}", Body=b"%d" % index)
        listed = await s3.list_objects_v2(Bucket=s3_bucket, Prefix="small/", MaxKeys=2)
        assert listed["IsTruncated"] and listed["KeyCount"] == 2

        # DeleteObjects works thanks to the Content-MD5 hook that s3_client() registers
        answer = await s3.delete_objects(
            Bucket=s3_bucket, Delete={"Objects": [{"Key": f"small/{i}"} for i in range(3)]}
        )
        assert not answer.get("Errors") and len(answer["Deleted"]) == 3
        assert (await s3.list_objects_v2(Bucket=s3_bucket))["KeyCount"] == 0

        # no atomic create-if-absent on Swift 2.30: the product must not rely on it
        code = await error_code(s3.put_object(Bucket=s3_bucket, Key="cond", Body=b"1", IfNoneMatch="*"))
        assert code == "NotImplemented"
