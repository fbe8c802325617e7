"""pytest plugin: a real S3-compatible store (OpenStack Swift all-in-one with s3api + tempauth).

Enable with ``pytest_plugins = ["tests.s3.fixtures"]`` (root conftest, or the
test module).  Swift takes about 3 s to start, so the store is session-scoped;
each test gets its own bucket.

Fixtures:
    swift_s3: the started :class:`~tests.s3.swift.SwiftS3Server` (session):
        ``.endpoint``, ``.access_key``, ``.secret_key``, ``.region``,
        ``.create_bucket()``, Swift-side inspection (``.object_names``,
        ``.segment_names``), logs under ``.logs_path``.
    s3_bucket: the name of a fresh, empty bucket, deleted (with any object or
        multipart upload left in it) after the test.

A missing Swift or memcached fails the test (never skips) with the
``apt-get install`` line to run.  S3 client settings: :mod:`tests.s3.client`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3.swift import SwiftError, SwiftS3Server


@pytest.fixture(scope="session")
def swift_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftS3Server]:
    """Swift with s3api + tempauth on free 127.0.0.1 ports, shared by the session, stopped at its end."""
    try:
        server = SwiftS3Server(tmp_path_factory.mktemp("swift-s3"))
        server.start()
    except (FileNotFoundError, PermissionError, SwiftError) as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(swift_s3: SwiftS3Server) -> Iterator[str]:
    """A fresh bucket in :func:`swift_s3`; deleted with its contents and uploads at teardown."""
    if not swift_s3.running:
        pytest.fail(f"the Swift store died; logs in {swift_s3.logs_path}", pytrace=False)
    bucket = swift_s3.create_bucket()
    yield bucket
    if swift_s3.running:
        swift_s3.delete_bucket(bucket)
