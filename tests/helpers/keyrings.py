"""keyrings.alt's EncryptedKeyring, made without its password prompt: the backend a jump host without a
Secret Service uses (PYTHON_KEYRING_BACKEND=keyrings.alt.file.EncryptedKeyring, with pycryptodome)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

ENCRYPTED_KEYRING = "keyrings.alt.file.EncryptedKeyring"


def make_encrypted_keyring(data_home: Path, password: str, secrets: Mapping[tuple[str, str], str]) -> Path:
    """Create the encrypted keyring file under ``data_home`` (its XDG_DATA_HOME) holding ``secrets``
    ((service, name) -> value), locked with ``password``, exactly as the backend's own first use would."""
    import os

    from keyrings.alt.file import EncryptedKeyring

    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(data_home)
    try:
        keyring = EncryptedKeyring()
        keyring.keyring_key = password  # what _init_file would have asked for twice
        keyring.set_password("keyring-setting", "password reference", "password reference value")
        keyring._write_config_value("keyring-setting", "scheme", keyring.scheme)
        keyring._write_config_value("keyring-setting", "version", keyring.version)
        for (service, name), value in secrets.items():
            keyring.set_password(service, name, value)
        return Path(keyring.file_path)
    finally:
        if previous is None:
            del os.environ["XDG_DATA_HOME"]
        else:
            os.environ["XDG_DATA_HOME"] = previous
