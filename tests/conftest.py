"""Shared fixtures: an isolated state directory and a real (file-backed) keyring per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Registry integration fixtures (real docker-registry processes, image pushes).
pytest_plugins = ["tests.registries.fixtures", "tests.s3.fixtures"]

TEST_KEYRING = "keyrings.alt.file.PlaintextKeyring"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state directory, also exported as $REGCACHE_HOME."""
    path = tmp_path / "home"
    monkeypatch.setenv("REGCACHE_HOME", str(path))
    return path


def _reset_keyring() -> None:
    import keyring.core

    keyring.core._keyring_backend = None  # re-detect from the environment on next use


def _chosen_keyring(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Point keyring at the backend ``env`` names, for this process (re-detected) and its subprocesses."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _reset_keyring()
    yield env
    _reset_keyring()


@pytest.fixture
def keyring_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A real keyring backend chosen explicitly, storing under this test's tmp dir.

    Returns the environment to give subprocesses so they use the same keyring.
    """
    yield from _chosen_keyring(monkeypatch, {"PYTHON_KEYRING_BACKEND": TEST_KEYRING,
                                             "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
                                             "XDG_CONFIG_HOME": str(tmp_path / "xdg-config")})


@pytest.fixture
def no_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A host with no usable keyring backend (keyring's own 'fail' backend)."""
    yield from _chosen_keyring(monkeypatch, {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
                                             "XDG_CONFIG_HOME": str(tmp_path / "xdg-config")})


@pytest.fixture
def encrypted_keyring_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """keyrings.alt's EncryptedKeyring chosen explicitly, storing under this test's tmp dir (empty: tests
    fill it with tests.helpers.keyrings.make_encrypted_keyring). Returns the environment for subprocesses."""
    from tests.helpers.keyrings import ENCRYPTED_KEYRING

    yield from _chosen_keyring(monkeypatch, {"PYTHON_KEYRING_BACKEND": ENCRYPTED_KEYRING,
                                             "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
                                             "XDG_CONFIG_HOME": str(tmp_path / "xdg-config")})
