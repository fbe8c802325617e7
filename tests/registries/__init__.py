"""Real container registries and test images for regcache's integration tests.

Modules:
    server: :class:`RegistryServer`, a ``docker-registry`` subprocess (anonymous,
        htpasswd or token auth) with a parsed access log.
    tokens: :class:`TokenIssuer`, a Docker token server signing ES256 JWTs.
    images: deterministic in-memory images (Docker v2 / OCI, single or multi-arch).
    client: :class:`RegistryClient` and :func:`push_image` (the push flow, with auth).
    skopeo: :class:`Skopeo`, the real client, and :class:`OciLayout` to read what it pulled.
    fixtures: the pytest plugin (``-p tests.registries.fixtures``).

Environment: ``REGCACHE_DOCKER_REGISTRY`` / ``REGCACHE_SKOPEO`` override the
binaries (default: ``docker-registry`` and ``skopeo`` from ``PATH``).
"""

from __future__ import annotations

import pytest

# Detailed assertion messages from the helpers that assert (before importing them).
pytest.register_assert_rewrite("tests.registries.skopeo")

from tests.registries.client import PushError, RegistryClient, push_image  # noqa: E402
from tests.registries.images import (  # noqa: E402
    Blob,
    Image,
    ImageManifest,
    Layer,
    Platform,
    PushedImage,
    build_image,
    build_layer,
    build_manifest,
)
from tests.registries.server import AccessLogEntry, RegistryError, RegistryServer  # noqa: E402
from tests.registries.skopeo import OciLayout, Skopeo, SkopeoError, assert_pulled  # noqa: E402
from tests.registries.tokens import Scope, TokenIssuer  # noqa: E402

__all__ = [
    "AccessLogEntry",
    "Blob",
    "Image",
    "ImageManifest",
    "Layer",
    "OciLayout",
    "Platform",
    "PushError",
    "PushedImage",
    "RegistryClient",
    "RegistryError",
    "RegistryServer",
    "Scope",
    "Skopeo",
    "SkopeoError",
    "TokenIssuer",
    "assert_pulled",
    "build_image",
    "build_layer",
    "build_manifest",
    "push_image",
]
