"""ObjectStore: the S3-compatible bucket that regcache nodes share (aiobotocore).

aiobotocore was chosen over obstore because a node killed in the middle of an upload leaves a
multipart upload behind, and only the full S3 API (ListMultipartUploads, AbortMultipartUpload,
ListParts) lets ``regcache gc`` find and abort it; obstore hides multipart uploads behind its own
writer. The client settings are the ones S3-compatible stores other than AWS need (verified against
OpenStack Swift's s3api): checksums only when an operation requires them (s3api refuses the
``aws-chunked`` bodies that default CRC32 checksums bring), and path-style addressing unless the
operator turns it off.

Keys, under the configured prefix:

* ``blobs/<algorithm>/<2 hex>/<hex>`` -- blob bytes, content-addressed;
* ``manifests/<algorithm>/<hex>`` -- manifest bytes, their media type as the object's Content-Type;
* ``links/<access>/<upstream source>/<algorithm>/<hex>`` -- the upstream repository, reached with
  that access (``anonymous`` or ``credential-set/<name>``), has this digest (a node verified it), so
  another node with the same access may serve it from the bucket without asking the upstream;
* ``tags/<access>/<upstream source>/<tag>`` -- the digest a node last saw for the tag (LastModified: when);
* ``uploads/<upload id>`` -- who runs a multipart upload (host, pid), for ``regcache gc``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from regcache.proxy.core.settings import S3Storage, StorageError
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.storage.download import STREAM_CHUNK

log = logging.getLogger("regcache.objectstore")

#: S3 refuses parts under 5 MiB (but the last) and Swift's s3api more than 1,000 parts
MIN_PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 1000
#: parts are whole multiples of this; bucket objects are streamed to clients in pieces of at most this
#: (download.STREAM_CHUNK, the per-client bound)
READ_CHUNK = STREAM_CHUNK
MAX_CONNECTIONS = 256
#: lookups, small reads and writes, and uploads: never queued behind clients reading blobs
CONTROL_CONNECTIONS = 64
#: bucket calls made under a shield (creating, aborting an upload) give up after this long
SHIELDED_TIMEOUT = 60.0
#: a multipart upload with no owner record this old is abandoned (the record follows its creation)
UNOWNED_UPLOAD_AGE = timedelta(minutes=10)
#: an upload owned by a node on another host is abandoned after this long (its pid cannot be checked)
DEFAULT_STALE_UPLOAD_AGE = timedelta(hours=24)

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidSecurity",
               "InvalidToken", "ExpiredToken", "403"}


def part_size_for(size: int | None) -> int:
    """The part size for a blob of ``size`` bytes (None: unknown) within the 1,000-part limit."""
    if size is None:
        return 64 * 1024 * 1024  # up to 64 GB without knowing the size in advance
    needed = -(-size // MAX_PARTS)
    return max(MIN_PART_SIZE, -(-needed // READ_CHUNK) * READ_CHUNK)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")


def _not_found(exc: Exception) -> bool:
    return _code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes and what the store says about it."""

    content: bytes
    content_type: str
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """A multipart upload not yet completed or aborted, and who started it (if recorded)."""

    key: str
    upload_id: str
    initiated: datetime
    owner: dict[str, Any] | None

    def stale(self, now: datetime, stale_after: timedelta, host: str) -> str | None:
        """Why the upload is abandoned, or None when its node may still be running it."""
        age = now - self.initiated
        if self.owner is None:
            return "no node records owning it" if age > UNOWNED_UPLOAD_AGE else None
        pid = self.owner.get("pid") if isinstance(self.owner, dict) else None
        if self.owner.get("host") == host and isinstance(pid, int) and not _alive(pid):
            return f"its node (pid {pid} on this host) is gone"
        if age > stale_after:
            return f"started {age.total_seconds() / 3600:.1f} h ago"
        return None


class ObjectStore:
    """One bucket of an S3-compatible store, through one aiobotocore client; use as an async context."""

    def __init__(self, config: S3Storage, secrets: SecretResolver | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.config = config
        self._secrets = secrets or SecretResolver()
        #: told the action of every failed call (the proxy counts them in /metrics)
        self._on_error = on_error
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._reader: Any = None
        self._reader_lock: Any = None
        self.prefix = config.prefix.strip("/") + "/"

    @property
    def where(self) -> str:
        """The bucket and endpoint, for messages (no secret, not even its id)."""
        return f"bucket {self.config.bucket} at {self.config.endpoint}"

    async def __aenter__(self) -> ObjectStore:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        access_key = self._secrets.get(self.config.access_key_id)
        secret_key = self._secrets.get(self.config.secret_access_key)
        session = get_session()

        async def client(pool: int) -> Any:
            config = AioConfig(
                s3={"addressing_style": "path" if self.config.path_style else "virtual"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5, read_timeout=60, max_pool_connections=pool)
            try:
                return await self._stack.enter_async_context(session.create_client(
                    "s3", endpoint_url=self.config.endpoint, region_name=self.config.region,
                    aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config))
            except Exception as exc:
                raise StorageError(f"cannot use the object store at {self.config.endpoint}: {exc}") from None

        import anyio

        self._client = await client(CONTROL_CONNECTIONS)
        self._open_reader = lambda: client(MAX_CONNECTIONS)
        self._reader_lock = anyio.Lock()
        return self

    async def _blob_reader(self) -> Any:
        """The client that streams blobs to clients, with a pool of its own: a client reading slowly
        holds a connection for its whole transfer, and must not starve lookups and uploads."""
        if self._reader is None:
            async with self._reader_lock:
                if self._reader is None:
                    self._reader = await self._open_reader()
        return self._reader

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    # -- checks --------------------------------------------------------------------------------

    async def check(self) -> None:
        """Fail with a clear StorageError unless the bucket can be listed with the credentials given."""
        try:
            await self._client.list_objects_v2(Bucket=self.config.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            raise self.error("list", exc) from None

    def error(self, action: str, exc: Exception) -> StorageError:
        """What a failure of the store means for the operator (botocore messages carry no secret)."""
        if self._on_error is not None:
            self._on_error(action)
        code = _code(exc)
        if code in _AUTH_CODES:
            return StorageError(
                f"the object store at {self.config.endpoint} refused regcache's credentials ({code}) for "
                f"bucket {self.config.bucket}: check the values of {self.config.access_key_id} and "
                f"{self.config.secret_access_key} (`regcache storage show`)")
        if code in ("NoSuchBucket",):
            return StorageError(f"bucket {self.config.bucket} does not exist at {self.config.endpoint}: create it "
                                f"or set another with `regcache storage set s3`")
        name = type(exc).__name__
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError"):
            return StorageError(f"cannot reach the object store at {self.config.endpoint}: is it running, and "
                                f"is the endpoint right?")
        return StorageError(f"the object store at {self.config.endpoint} failed to {action} in bucket "
                            f"{self.config.bucket}: {code or name}: {exc}")

    # -- keys ----------------------------------------------------------------------------------

    def blob_key(self, digest: str) -> str:
        algorithm, _, encoded = digest.partition(":")
        return f"{self.prefix}blobs/{algorithm}/{encoded[:2]}/{encoded}"

    def manifest_key(self, digest: str) -> str:
        algorithm, _, encoded = digest.partition(":")
        return f"{self.prefix}manifests/{algorithm}/{encoded}"

    def link_key(self, source: str, digest: str) -> str:
        algorithm, _, encoded = digest.partition(":")
        return f"{self.prefix}links/{source}/{algorithm}/{encoded}"

    def tag_key(self, source: str, tag: str) -> str:
        return f"{self.prefix}tags/{source}/{tag}"

    def member_key(self, node_id: str = "") -> str:
        """A fleet member's heartbeat (docs/scale-out.md, "A fleet"); without ``node_id``, the prefix of all."""
        return f"{self.prefix}fleet/members/{node_id}" + (".json" if node_id else "")

    def _owner_key(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{upload_id.replace('/', '_')}"

    # -- objects -------------------------------------------------------------------------------

    async def size(self, key: str) -> int | None:
        """The object's size, or None when there is no (completed) object at ``key``."""
        try:
            head = await self._client.head_object(Bucket=self.config.bucket, Key=key)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise self.error("look up an object", exc) from None
        return int(head["ContentLength"])

    async def read(self, key: str) -> StoredObject | None:
        """A small object's bytes (manifests, tags), or None."""
        try:
            response = await self._client.get_object(Bucket=self.config.bucket, Key=key)
            async with response["Body"] as body:
                content = await body.read()
        except Exception as exc:
            if _not_found(exc):
                return None
            raise self.error("read an object", exc) from None
        return StoredObject(content, response.get("ContentType") or "application/octet-stream",
                            response["LastModified"])

    async def chunks(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of an object as they arrive."""
        if end is not None and end <= start:  # an empty range cannot be asked for ("bytes=0--1")
            return
        kwargs: dict[str, Any] = {}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        reader = await self._blob_reader()
        try:
            response = await reader.get_object(Bucket=self.config.bucket, Key=key, **kwargs)
        except Exception as exc:
            raise self.error("read a blob", exc) from None
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk

    async def write(self, key: str, content: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            await self._client.put_object(Bucket=self.config.bucket, Key=key, Body=content, ContentType=content_type)
        except Exception as exc:
            raise self.error("write an object", exc) from None

    async def list_keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Keys of completed objects under ``prefix``, at most ``limit`` of them (one page)."""
        try:
            listed = await self._client.list_objects_v2(Bucket=self.config.bucket, Prefix=prefix, MaxKeys=limit)
        except Exception as exc:
            raise self.error("list objects", exc) from None
        return [item["Key"] for item in listed.get("Contents", [])]

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.config.bucket, Key=key)
        except Exception as exc:
            if not _not_found(exc):
                raise self.error("delete an object", exc) from None

    # -- multipart uploads ---------------------------------------------------------------------

    async def start_upload(self, key: str) -> MultipartUpload:
        """A multipart upload to ``key``, recorded as this process's so gc can tell when it is abandoned.

        Shielded from cancellation: a caller cancelled half-way would leave an upload it cannot abort
        (it never got its id); cancelled, it gets the upload and aborts it at its next await.
        """
        import anyio

        with anyio.fail_after(SHIELDED_TIMEOUT, shield=True):
            try:
                created = await self._client.create_multipart_upload(Bucket=self.config.bucket, Key=key,
                                                                      ContentType="application/octet-stream")
            except Exception as exc:
                raise self.error("start an upload", exc) from None
            upload = MultipartUpload(self, key, created["UploadId"])
            owner = {"host": socket.gethostname(), "pid": os.getpid(), "key": key,
                     "started": datetime.now(timezone.utc).isoformat()}
            try:
                await self.write(self._owner_key(upload.upload_id), json.dumps(owner).encode(), "application/json")
            except Exception:
                await upload.abort()
                raise
        return upload

    async def pending_uploads(self) -> list[PendingUpload]:
        """Every multipart upload under the prefix not completed or aborted, with its owner record."""
        found: list[PendingUpload] = []
        kwargs: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": self.prefix}
        try:
            while True:
                page = await self._client.list_multipart_uploads(**kwargs)
                for upload in page.get("Uploads", []):
                    owner_object = await self.read(self._owner_key(upload["UploadId"]))
                    owner = None
                    if owner_object is not None:
                        try:
                            owner = json.loads(owner_object.content)
                        except ValueError:
                            owner = None
                        if not isinstance(owner, dict):  # not a record of ours: judged as unowned
                            owner = None
                    found.append(PendingUpload(upload["Key"], upload["UploadId"], upload["Initiated"], owner))
                if not page.get("IsTruncated"):
                    return found
                kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
                kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")
        except Exception as exc:
            if isinstance(exc, StorageError):
                raise
            raise self.error("list uploads", exc) from None

    async def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            if not _not_found(exc):
                raise self.error("abort an upload", exc) from None
        await self.delete(self._owner_key(upload_id))

    async def stale_uploads(self, stale_after: timedelta = DEFAULT_STALE_UPLOAD_AGE) -> list[tuple[PendingUpload, str]]:
        """The pending uploads no running node owns, each with the reason it is judged abandoned."""
        now = datetime.now(timezone.utc)
        host = socket.gethostname()
        result = []
        for upload in await self.pending_uploads():
            why = upload.stale(now, stale_after, host)
            if why is not None:
                result.append((upload, why))
        return result


class MultipartUpload:
    """One multipart upload: parts in order, then complete (the object appears) or abort (nothing does)."""

    def __init__(self, store: ObjectStore, key: str, upload_id: str) -> None:
        self.store = store
        self.key = key
        self.upload_id = upload_id
        self._parts: list[dict[str, Any]] = []

    async def upload_part(self, data: bytes) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(f"an upload to {self.store.where} needs more than {MAX_PARTS} parts")
        try:
            part = await self.store._client.upload_part(Bucket=self.store.config.bucket, Key=self.key,
                                                        UploadId=self.upload_id, PartNumber=number, Body=data)
        except Exception as exc:
            raise self.store.error("upload a part", exc) from None
        self._parts.append({"PartNumber": number, "ETag": part["ETag"]})

    async def complete(self) -> None:
        try:
            await self.store._client.complete_multipart_upload(
                Bucket=self.store.config.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": self._parts})
        except Exception as exc:
            raise self.store.error("complete an upload", exc) from None
        await self.store.delete(self.store._owner_key(self.upload_id))

    async def abort(self) -> None:
        await self.store.abort_upload(self.key, self.upload_id)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
