"""pytest plugin: real distribution registries and test images.

Enable with ``pytest_plugins = ["tests.registries.fixtures"]`` in the root
conftest (or ``-p tests.registries.fixtures``).  Registries start in ~30 ms,
so every registry fixture is function-scoped: each test gets its own
storage, log and token issuer, and may stop/start them freely.

Fixtures:
    registry_factory: :class:`RegistryFactory`, to start any number of registries.
    anonymous_registry, basic_auth_registry, token_registry: started
        :class:`~tests.registries.server.RegistryServer` s of each auth flavour.
    push_image: :class:`PushImage`, builds and pushes a test image.
    skopeo: :class:`~tests.registries.skopeo.Skopeo`, the real client.

A missing ``docker-registry`` or ``skopeo`` binary fails the test (never
skips) with the ``apt-get install`` line to run.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from tests.registries.client import push_image as _push_image
from tests.registries.images import MediaFamily, PushedImage, build_image
from tests.registries.server import RegistryServer, registry_binary
from tests.registries.skopeo import Skopeo, skopeo_binary
from tests.registries.tokens import TokenIssuer

DEFAULT_USERNAME = "tester"


class RegistryFactory:
    """Starts registries (and their token issuers) and stops them all on :meth:`close`.

    Each registry lives in a fresh directory from ``tmp_path_factory``; on
    close its ``storage/`` is deleted but its config and log are kept for
    post-mortems.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, binary: str) -> None:
        self._tmp = tmp_path_factory
        self.binary = binary
        self.servers: list[RegistryServer] = []
        self.issuers: list[TokenIssuer] = []

    def _root(self, flavour: str) -> Path:
        return self._tmp.mktemp(f"registry-{flavour}")

    def _started(self, server: RegistryServer) -> RegistryServer:
        self.servers.append(server)
        return server.start()

    def anonymous(self) -> RegistryServer:
        """Start a registry without authentication."""
        return self._started(RegistryServer.anonymous(self._root("anonymous"), binary=self.binary))

    def htpasswd(self, username: str = DEFAULT_USERNAME, password: str | None = None) -> RegistryServer:
        """Start a registry requiring HTTP Basic ``username``/``password`` (random by default)."""
        password = password or secrets.token_urlsafe(12)
        root = self._root("htpasswd")
        return self._started(RegistryServer.htpasswd(root, username, password, binary=self.binary))

    def token(
        self,
        *,
        username: str = DEFAULT_USERNAME,
        password: str | None = None,
        allow_anonymous: bool = True,
        expires_in: int = 300,
    ) -> RegistryServer:
        """Start a token-auth registry and its :class:`TokenIssuer` (``server.issuer``)."""
        issuer = TokenIssuer(
            username=username,
            password=password or secrets.token_urlsafe(12),
            allow_anonymous=allow_anonymous,
            expires_in=expires_in,
        )
        self.issuers.append(issuer)
        issuer.start()
        return self._started(RegistryServer.token(self._root("token"), issuer, binary=self.binary))

    def close(self) -> None:
        """Stop every registry and issuer; delete registry storage."""
        for server in self.servers:
            server.stop()
            shutil.rmtree(server.storage_path, ignore_errors=True)
        for issuer in self.issuers:
            issuer.stop()
        self.servers.clear()
        self.issuers.clear()


class PushImage(Protocol):
    """The ``push_image`` fixture's signature."""

    def __call__(
        self,
        registry: RegistryServer,
        repository: str,
        tag: str = "latest",
        *,
        layers: Sequence[int] = (4096,),
        media_type: MediaFamily = "oci",
        multiarch: bool = False,
        seed: str | None = None,
    ) -> PushedImage:
        """Build an image (one layer per size in ``layers``, per platform) and push it.

        ``seed`` (default ``"repository:tag"``) determines every byte, so
        pushing with the same arguments twice pushes the same image.
        """
        ...


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    """Start extra registries in a test; all are stopped at teardown."""
    try:
        binary = registry_binary()
    except FileNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
    factory = RegistryFactory(tmp_path_factory, binary)
    yield factory
    factory.close()


@pytest.fixture
def anonymous_registry(registry_factory: RegistryFactory) -> RegistryServer:
    """A started registry without authentication."""
    return registry_factory.anonymous()


@pytest.fixture
def basic_auth_registry(registry_factory: RegistryFactory) -> RegistryServer:
    """A started htpasswd registry; credentials in ``.username``/``.password``/``.credentials``."""
    return registry_factory.htpasswd()


@pytest.fixture
def token_registry(registry_factory: RegistryFactory) -> RegistryServer:
    """A started token-auth registry; ``.issuer`` is its :class:`TokenIssuer`.

    Anonymous pulls are allowed (set ``token_registry.issuer.allow_anonymous
    = False`` to refuse them); ``.username``/``.password`` may push and pull.
    """
    return registry_factory.token()


@pytest.fixture
def push_image() -> PushImage:
    """Build and push test images: ``push_image(registry, "library/ubuntu", "22.04", layers=[...])``."""

    def push(
        registry: RegistryServer,
        repository: str,
        tag: str = "latest",
        *,
        layers: Sequence[int] = (4096,),
        media_type: MediaFamily = "oci",
        multiarch: bool = False,
        seed: str | None = None,
    ) -> PushedImage:
        image = build_image(
            layers,
            seed=seed if seed is not None else f"{repository}:{tag}",
            media_type=media_type,
            multiarch=multiarch,
        )
        return _push_image(image, registry, repository, tag)

    return push


@pytest.fixture
def skopeo() -> Skopeo:
    """The real skopeo client (fails the test with an install hint when missing)."""
    try:
        return Skopeo(skopeo_binary())
    except FileNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
