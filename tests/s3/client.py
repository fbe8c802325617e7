"""The S3 client settings that work against :class:`~tests.s3.swift.SwiftS3Server` (aiobotocore).

``aiobotocore`` needs three adjustments for Swift 2.30's s3api, both also
needed by the product against real Swift deployments:

* ``addressing_style="path"``: s3api here has no ``storage_domain``, so
  virtual-hosted buckets (``bucket.127.0.0.1``) cannot work;
* ``request_checksum_calculation="when_required"`` (and the matching response
  setting): by default botocore >= 1.36 adds CRC32 checksums to every
  PutObject/UploadPart, and over https it sends their bodies ``aws-chunked``
  with a trailing checksum, which s3api 2.30 refuses (501 "Transfering
  payloads in multiple chunks using aws-chunked is not supported");
* :func:`add_content_md5` on ``DeleteObjects``: s3api answers 400
  ``Missing required header for this request: Content-MD5`` to botocore's
  CRC32-only request, whatever the checksum setting.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiobotocore.session import get_session
from botocore.config import Config

if TYPE_CHECKING:
    from tests.s3.swift import SwiftS3Server


def client_config() -> Config:
    """The botocore ``Config`` for Swift's s3api (path-style, checksums only when required, no retries)."""
    return Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )


def client_kwargs(server: SwiftS3Server) -> dict[str, Any]:
    """Keyword arguments for ``session.create_client("s3", **kwargs)`` against ``server``."""
    return {
        "endpoint_url": server.endpoint,
        "region_name": server.region,
        "aws_access_key_id": server.access_key,
        "aws_secret_access_key": server.secret_key,
        "config": client_config(),
    }


def add_content_md5(request: Any, **_: Any) -> None:
    """botocore ``before-sign`` hook: give the request a ``Content-MD5`` of its (in-memory) body."""
    body = request.body
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, (bytes, bytearray)) and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


@asynccontextmanager
async def s3_client(server: SwiftS3Server) -> AsyncIterator[Any]:
    """An aiobotocore S3 client for ``server``, with the :func:`add_content_md5` hook on DeleteObjects."""
    async with get_session().create_client("s3", **client_kwargs(server)) as client:
        client.meta.events.register("before-sign.s3.DeleteObjects", add_content_md5)
        yield client
