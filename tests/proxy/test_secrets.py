"""Secret ids, the keyring and env stores, and the no-keyring error."""

from __future__ import annotations

import pytest

from regcache.proxy.core.errors import KeyringUnavailableError, SecretError, ValidationError
from regcache.proxy.secrets import EnvSecretStore, KeyringSecretStore, SecretId, SecretResolver


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("keyring://regcache/dockerhub-token", SecretId("keyring", "regcache", "dockerhub-token")),
        ("keyring://svc/user@example.com", SecretId("keyring", "svc", "user@example.com")),
        ("env://HUB_TOKEN", SecretId("env", "", "HUB_TOKEN")),
    ],
)
def test_parse(value, expected):
    assert SecretId.parse(value) == expected
    assert str(expected) == value


@pytest.mark.parametrize("value", ["", "hunter2", "keyring://", "keyring://svc", "keyring://svc/",
                                   "env://", "env://1ABC", "https://vault/secrets/x", "file:///etc/passwd"])
def test_parse_refuses(value):
    with pytest.raises(ValidationError, match="keyring://SERVICE/NAME or env://VARIABLE"):
        SecretId.parse(value)


def test_env_store_reads_and_refuses_writes():
    resolver = SecretResolver({"env": EnvSecretStore({"HUB_TOKEN": "t0ken"}), "keyring": KeyringSecretStore()})
    assert resolver.get("env://HUB_TOKEN") == "t0ken"
    with pytest.raises(SecretError, match="set HUB_TOKEN there instead"):
        resolver.set("env://HUB_TOKEN", "x")
    with pytest.raises(SecretError, match="set the environment variable MISSING") as info:
        resolver.get("env://MISSING")
    assert info.value.code == "SecretNotFound"


def test_keyring_round_trip(keyring_env):
    resolver = SecretResolver()
    resolver.set("keyring://regcache/token", "s3cr3t-value")
    assert resolver.get("keyring://regcache/token") == "s3cr3t-value"
    assert resolver.delete("keyring://regcache/token")
    with pytest.raises(SecretError, match="regcache secret set keyring://regcache/token") as info:
        resolver.get("keyring://regcache/token")
    assert info.value.code == "SecretNotFound"


def test_empty_value_refused(keyring_env):
    with pytest.raises(ValidationError, match="empty"):
        SecretResolver().set("keyring://regcache/token", "")


def test_no_keyring_backend_is_a_clear_error(no_keyring):
    with pytest.raises(KeyringUnavailableError) as info:
        SecretResolver().get("keyring://regcache/token")
    message = str(info.value)
    assert info.value.code == "KeyringUnavailable"
    assert "no usable keyring backend" in message
    assert "Secret Service" in message and "PYTHON_KEYRING_BACKEND" in message
    assert "never falls back" in message


def test_plaintext_backend_is_not_picked_silently(tmp_path, monkeypatch):
    """keyrings.alt's plaintext file is installed here; auto-detected, it must be refused."""
    import keyring.core

    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    keyring.core._keyring_backend = None
    try:
        backend = keyring.get_keyring()
        if backend.priority >= 1:
            pytest.skip(f"this host has a real keyring backend ({type(backend).__name__})")
        with pytest.raises(KeyringUnavailableError):
            SecretResolver().set("keyring://regcache/token", "s3cr3t-value")
        assert not (tmp_path / "data").exists() or "s3cr3t-value" not in "".join(
            p.read_text() for p in (tmp_path / "data").rglob("*") if p.is_file())
    finally:
        keyring.core._keyring_backend = None
