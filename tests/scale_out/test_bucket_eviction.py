"""The proxy's own eviction round with s3 storage: bucket objects first, then rows; never rows alone."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from regcache.proxy.core.settings import make_s3_storage
from regcache.proxy.jobs.eviction import Evictor, evict
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import AsyncStateStore, StateStore
from regcache.proxy.storage.backend import BucketBackend, FilesystemBackend
from regcache.proxy.storage.objectstore import ObjectStore

from .nodes import ACCESS_KEY_VAR, SECRET_KEY_VAR, bucket_keys, s3_env, write_object

OLD = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _blob(n: int) -> tuple[str, str]:
    encoded = f"{n:064x}"
    return f"sha256:{encoded}", f"regcache/blobs/sha256/{encoded[:2]}/{encoded}"


def test_the_eviction_round_deletes_bucket_objects_then_rows(home, swift_s3, s3_bucket, monkeypatch):
    for key, value in s3_env(swift_s3).items():
        monkeypatch.setenv(key, value)
    config = make_s3_storage(swift_s3.endpoint, s3_bucket, f"env://{ACCESS_KEY_VAR}", f"env://{SECRET_KEY_VAR}",
                             region=swift_s3.region)
    blobs = [_blob(n) for n in range(3)]
    store = StateStore(home)
    try:
        for n, (digest, key) in enumerate(blobs):
            write_object(swift_s3, s3_bucket, key, b"x" * 1000)
            store.put_blob(digest, 1000, f"s3:{key}", OLD.replace(hour=n))  # blob 0 is the least recently pulled
        store.set_setting("max-size", "2000")
        plan = Evictor(store, min_idle=0).plan()
        assert [c.digest for c in plan.candidates] == [blobs[0][0]]

        async def round_without_bucket() -> int:  # e.g. storage switched back to filesystem meanwhile
            return await evict(AsyncStateStore(store), plan, FilesystemBackend(home))

        assert asyncio.run(round_without_bucket()) == 0
        assert store.blob_usage().keys() == {digest for digest, _ in blobs}  # the row stays: the object does

        async def round_with_bucket() -> int:
            async with ObjectStore(config, SecretResolver()) as objects:
                return await evict(AsyncStateStore(store), plan, BucketBackend(objects))

        assert asyncio.run(round_with_bucket()) == 1000
        assert blobs[0][1] not in bucket_keys(swift_s3, s3_bucket)
        assert {blobs[1][1], blobs[2][1]} <= set(bucket_keys(swift_s3, s3_bucket))
        assert store.blob_usage().keys() == {blobs[1][0], blobs[2][0]}
    finally:
        store.close()
