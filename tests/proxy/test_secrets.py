"""Secret ids, the keyring, env and file stores, the no-keyring error, and keyrings that never prompt."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from regcache.proxy.core.errors import KeyringUnavailableError, SecretError, ValidationError
from regcache.proxy.secrets import EnvSecretStore, KeyringSecretStore, SecretId, SecretResolver
from tests.helpers.keyrings import make_encrypted_keyring


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("keyring://regcache/dockerhub-token", SecretId("keyring", "regcache", "dockerhub-token")),
        ("keyring://svc/user@example.com", SecretId("keyring", "svc", "user@example.com")),
        ("env://HUB_TOKEN", SecretId("env", "", "HUB_TOKEN")),
        ("file:///run/credentials/regcache.service/hub-token",
         SecretId("file", "", "/run/credentials/regcache.service/hub-token")),
    ],
)
def test_parse(value, expected):
    assert SecretId.parse(value) == expected
    assert str(expected) == value


@pytest.mark.parametrize("value", ["", "hunter2", "keyring://", "keyring://svc", "keyring://svc/",
                                   "env://", "env://1ABC", "https://vault/secrets/x"])
def test_parse_refuses(value):
    with pytest.raises(ValidationError, match="keyring://SERVICE/NAME, env://VARIABLE or file:///PATH"):
        SecretId.parse(value)


@pytest.mark.parametrize("value", ["file://", "file://relative/path", "file:///", "file:///run/secrets/",
                                   "file:///run/../etc/shadow", "file:///run/./x", "file://host/etc/x"])
def test_file_ids_need_a_plain_absolute_path(value):
    with pytest.raises(ValidationError, match="file://"):
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
    from keyrings.alt.file import PlaintextKeyring

    keyring.core.set_keyring(PlaintextKeyring())  # what detection picks where it is the only backend
    try:
        with pytest.raises(KeyringUnavailableError):
            SecretResolver().set("keyring://regcache/token", "s3cr3t-value")
        assert not (tmp_path / "data").exists() or "s3cr3t-value" not in "".join(
            p.read_text() for p in (tmp_path / "data").rglob("*") if p.is_file())
    finally:
        keyring.core._keyring_backend = None


def test_an_automatic_chain_with_a_plaintext_backend_is_refused(tmp_path, monkeypatch):
    """With keyrings.alt and pycryptodome installed, keyring picks a chainer of EncryptedKeyring and the
    plaintext file: it would write to the first that accepts. Picked automatically, it is refused."""
    import keyring.core
    from keyring.backends.chainer import ChainerBackend

    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    keyring.core._keyring_backend = None
    try:
        backend = keyring.get_keyring()
        assert isinstance(backend, ChainerBackend), backend  # what this host (the test extras) offers
        assert "PlaintextKeyring" in [type(b).__name__ for b in backend.backends]
        with pytest.raises(KeyringUnavailableError) as info:
            SecretResolver().set("keyring://regcache/token", "s3cr3t-value")
        message = str(info.value)
        assert "PlaintextKeyring" in message and "PYTHON_KEYRING_BACKEND" in message
        assert not (tmp_path / "data").exists()
    finally:
        keyring.core._keyring_backend = None


def test_the_error_on_a_bare_host_names_the_working_choices(no_keyring):
    message = SecretResolver().check("keyring://regcache/token").reason
    for choice in ("file:///PATH", "env://VAR", "keyrings.alt", "pycryptodome", "EncryptedKeyring"):
        assert choice in message


# -- file:// ---------------------------------------------------------------------------------------

def _secret_file(directory: Path, content: bytes, mode: int = 0o600, dir_mode: int = 0o700) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "token"
    path.write_bytes(content)
    path.chmod(mode)
    directory.chmod(dir_mode)
    return f"file://{path}"


def test_file_secret_drops_one_trailing_line_break(tmp_path):
    resolver = SecretResolver()
    assert resolver.get(_secret_file(tmp_path / "a", b"t0ken\n")) == "t0ken"
    assert resolver.get(_secret_file(tmp_path / "b", b"t0ken\r\n")) == "t0ken"
    assert resolver.get(_secret_file(tmp_path / "c", b"t0ken\n\n")) == "t0ken\n"
    assert resolver.get(_secret_file(tmp_path / "d", "pässword".encode())) == "pässword"
    assert resolver.check(_secret_file(tmp_path / "e", b"x", mode=0o400)).readable


def test_file_secret_missing_empty_or_not_text(tmp_path):
    resolver = SecretResolver()
    with pytest.raises(SecretError, match="create .*/nope holding the value") as info:
        resolver.get(f"file://{tmp_path}/nope")
    assert info.value.code == "SecretNotFound"
    with pytest.raises(SecretError, match="is empty"):
        resolver.get(_secret_file(tmp_path / "a", b"\n"))
    with pytest.raises(SecretError, match="not UTF-8"):
        resolver.get(_secret_file(tmp_path / "b", b"\xff\xfe"))


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_file_secret_writable_by_others_is_refused(tmp_path, mode):
    secret_id = _secret_file(tmp_path / "s", b"t0ken\n", mode=mode)
    with pytest.raises(SecretError, match="writable by its group or others") as info:
        SecretResolver().get(secret_id)
    assert info.value.code == "SecretFileUnsafe" and "t0ken" not in str(info.value)
    access = SecretResolver().check(secret_id)
    assert not access.readable and access.code == "SecretFileUnsafe"


@pytest.mark.parametrize("dir_mode", [0o770, 0o707, 0o1777])
def test_file_secret_in_a_directory_others_can_write_is_refused(tmp_path, dir_mode):
    secret_id = _secret_file(tmp_path / "shared", b"t0ken\n", dir_mode=dir_mode)
    with pytest.raises(SecretError, match="its directory .* is writable by its group or others"):
        SecretResolver().get(secret_id)


def test_file_secret_through_a_link_checks_where_it_points(tmp_path):
    """Kubernetes mounts secrets as links into a ..data directory: the target's directory is checked too."""
    good = _secret_file(tmp_path / "data", b"t0ken\n")
    (tmp_path / "mount").mkdir(mode=0o700)
    (tmp_path / "mount" / "token").symlink_to(good.removeprefix("file://"))
    assert SecretResolver().get(f"file://{tmp_path}/mount/token") == "t0ken"
    (tmp_path / "data").chmod(0o777)
    with pytest.raises(SecretError, match="writable by its group or others"):
        SecretResolver().get(f"file://{tmp_path}/mount/token")


def test_file_secret_not_owned_by_us_or_root_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    secret_id = _secret_file(tmp_path / "s", b"t0ken\n")
    os.chown(secret_id.removeprefix("file://"), 4242, 4242)
    with pytest.raises(SecretError, match="owned by uid 4242"):
        SecretResolver().get(secret_id)


def test_file_secret_readable_by_its_group_warns_once(tmp_path, caplog):
    secret_id = _secret_file(tmp_path / "s", b"t0ken\n", mode=0o640)
    resolver = SecretResolver()
    with caplog.at_level(logging.WARNING, logger="regcache.secrets"):
        assert resolver.get(secret_id) == "t0ken"
        assert resolver.get(secret_id) == "t0ken"
        assert SecretResolver().get(secret_id) == "t0ken"
    warnings = [r.getMessage() for r in caplog.records if "readable by its group" in r.getMessage()]
    assert len(warnings) == 1 and "chmod g-r" in warnings[0] and "t0ken" not in warnings[0]
    access = resolver.check(secret_id)
    assert access.readable and "readable by its group" in (access.warning or "")


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o444])
def test_file_secret_readable_by_every_user_is_refused(tmp_path, caplog, mode):
    secret_id = _secret_file(tmp_path / "s", b"t0ken\n", mode=mode)
    with caplog.at_level(logging.WARNING, logger="regcache.secrets"), \
            pytest.raises(SecretError, match=f"every user of this host can read it \\(mode {mode:04o}\\)") as refused:
        SecretResolver().get(secret_id)
    assert refused.value.code == "SecretFileUnsafe" and "chmod o-r" in str(refused.value)
    assert "defaultMode" in str(refused.value)  # the way out where the file is a Kubernetes secret volume
    assert "t0ken" not in str(refused.value) and "t0ken" not in caplog.text
    access = SecretResolver().check(secret_id)
    assert not access.readable and access.code == "SecretFileUnsafe"


def test_file_secret_size_is_bounded_and_a_fifo_never_blocks(tmp_path):
    resolver = SecretResolver()
    resolver.file_max_size = 1024
    assert resolver.get(_secret_file(tmp_path / "a", b"x" * 1024)) == "x" * 1024
    with pytest.raises(SecretError, match="larger than secret-file-max-size"):
        resolver.get(_secret_file(tmp_path / "b", b"x" * 1025))
    fifo_dir = tmp_path / "f"
    fifo_dir.mkdir(mode=0o700)
    os.mkfifo(fifo_dir / "token", 0o600)  # no writer: a blocking open would hang here
    with pytest.raises(SecretError, match="not a regular file"):
        resolver.get(f"file://{fifo_dir}/token")


def test_file_and_env_secrets_are_read_only(tmp_path):
    resolver = SecretResolver()
    secret_id = _secret_file(tmp_path / "s", b"t0ken\n")
    for call in (lambda: resolver.set(secret_id, "other"), lambda: resolver.delete(secret_id),
                 lambda: resolver.check_writable(secret_id)):
        with pytest.raises(SecretError, match="read-only source|not regcache's to delete") as info:
            call()
        assert info.value.code == "SecretNotWritable"
    assert Path(secret_id.removeprefix("file://")).read_bytes() == b"t0ken\n"
    with pytest.raises(SecretError, match="not regcache's to delete"):
        resolver.delete("env://HOME")


# -- a keyring that needs a password ---------------------------------------------------------------

def test_a_locked_encrypted_keyring_never_prompts_and_unlocks_once(encrypted_keyring_env, tmp_path, monkeypatch):
    make_encrypted_keyring(tmp_path / "xdg-data", "keyring-pw", {("regcache", "hub-token"): "t0ken"})
    asked: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt="", stream=None: asked.append(prompt) or "keyring-pw")
    resolver = SecretResolver()
    with pytest.raises(SecretError, match="is locked; regcache never asks") as info:
        resolver.get("keyring://regcache/hub-token")
    assert info.value.code == "KeyringLocked" and "file:///PATH" in str(info.value)
    assert not resolver.check("keyring://regcache/hub-token").readable
    lock = resolver.keyring_lock()
    assert lock is not None and "crypted_pass.cfg" in lock.description
    with pytest.raises(SecretError, match="wrong password"):
        lock.unlock("not-it")
    assert resolver.keyring_lock() is not None  # still locked
    lock.unlock("keyring-pw")
    assert resolver.keyring_lock() is None
    assert resolver.get("keyring://regcache/hub-token") == "t0ken"
    assert SecretResolver().get("keyring://regcache/hub-token") == "t0ken"  # for the whole process
    assert asked == []


def test_a_new_encrypted_keyring_file_is_not_created_by_a_prompt(encrypted_keyring_env, monkeypatch):
    """Writing to an encrypted keyring that has no file yet would ask for a new password: refused."""
    import getpass

    asked: list[str] = []

    def recorder(prompt: str = "", stream: object = None) -> str:
        asked.append(prompt)
        return "pw"

    monkeypatch.setattr("getpass.getpass", recorder)
    with pytest.raises(SecretError, match="asked for a password") as info:
        SecretResolver().set("keyring://regcache/hub-token", "t0ken")
    assert info.value.code == "KeyringLocked" and asked == []
    assert getpass.getpass is recorder  # the guard is undone


def test_an_interactive_resolver_asks_once_for_the_keyring_password(encrypted_keyring_env, tmp_path, monkeypatch):
    make_encrypted_keyring(tmp_path / "xdg-data", "keyring-pw", {("regcache", "hub-token"): "t0ken"})
    asked: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt="", stream=None: asked.append(prompt) or "keyring-pw")
    resolver = SecretResolver(interactive=True)
    assert resolver.get("keyring://regcache/hub-token") == "t0ken"
    resolver.set("keyring://regcache/other", "v")
    assert resolver.get("keyring://regcache/other") == "v"
    assert len(asked) == 1 and "crypted_pass.cfg" in asked[0]
