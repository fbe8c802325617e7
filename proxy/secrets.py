"""Secret ids and the stores behind them; secret values never leave this module but to the caller.

A secret id is a URI:

* ``keyring://SERVICE/NAME`` -- ``keyring.get_password(SERVICE, NAME)`` (the Key Vault analogue);
* ``env://VAR`` -- the process environment (for containers and CI; weaker: visible to anything
  that can read the process's environment).

There is never a silent plaintext fallback: with no usable keyring backend, reading or writing a
``keyring://`` secret raises :class:`KeyringUnavailableError` naming the ways out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from regcache.proxy.core.errors import KeyringUnavailableError, SecretError, ValidationError
from regcache.proxy.core.secret_ids import SecretId

NO_KEYRING_HELP = (
    "no usable keyring backend on this host: enable a Secret Service (e.g. gnome-keyring or KeePassXC "
    "over D-Bus), or choose a backend with PYTHON_KEYRING_BACKEND (e.g. an encrypted file keyring: "
    "pip install keyrings.alt; PYTHON_KEYRING_BACKEND=keyrings.alt.file.EncryptedKeyring), "
    "or use env://VAR secret ids; regcache never falls back to storing secrets in plain text"
)


class SecretStore(Protocol):
    """Where the values behind one scheme of secret ids live."""

    def get(self, secret: SecretId) -> str | None:
        """The value, or ``None`` when there is no such secret."""

    def set(self, secret: SecretId, value: str) -> None:
        """Store ``value``."""

    def delete(self, secret: SecretId) -> bool:
        """Remove the secret; False when there was none."""


class KeyringSecretStore:
    """``keyring://SERVICE/NAME`` through the ``keyring`` library's configured backend."""

    def _backend(self):
        # Imported lazily: the keyring library scans entry points at import, which slows
        # every CLI command that never touches a secret.
        import keyring
        from keyring.backends import fail

        try:
            backend = keyring.get_keyring()
        except Exception as exc:  # a broken PYTHON_KEYRING_BACKEND setting surfaces here
            raise KeyringUnavailableError(f"{NO_KEYRING_HELP} ({type(exc).__name__})") from None
        if isinstance(backend, fail.Keyring):
            raise KeyringUnavailableError(NO_KEYRING_HELP)
        # A backend below priority 1 (e.g. keyrings.alt's plaintext file) is only acceptable when
        # the operator chose it; picked automatically it would be a silent plaintext fallback.
        if not _backend_chosen_explicitly() and getattr(backend, "priority", 0) < 1:
            raise KeyringUnavailableError(NO_KEYRING_HELP)
        return backend

    def _call(self, op, *args):
        from keyring.errors import KeyringError, NoKeyringError, PasswordDeleteError

        backend = self._backend()
        try:
            return op(backend, *args)
        except NoKeyringError:
            raise KeyringUnavailableError(NO_KEYRING_HELP) from None
        except PasswordDeleteError:
            return False
        except KeyringError as exc:
            raise SecretError(f"the keyring backend failed ({type(exc).__name__}); check that it is unlocked",
                              code="KeyringUnavailable") from None

    def get(self, secret: SecretId) -> str | None:
        return self._call(lambda b, s, n: b.get_password(s, n), secret.service, secret.name)

    def set(self, secret: SecretId, value: str) -> None:
        self._call(lambda b, s, n, v: b.set_password(s, n, v), secret.service, secret.name, value)

    def delete(self, secret: SecretId) -> bool:
        return self._call(lambda b, s, n: b.delete_password(s, n) or True, secret.service, secret.name)


def _backend_chosen_explicitly() -> bool:
    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return True
    from keyring.util import platform_

    return (platform_.config_root() / "keyringrc.cfg").is_file()


class EnvSecretStore:
    """``env://VAR``: read-only; the value comes from the environment of the regcache process."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def get(self, secret: SecretId) -> str | None:
        return self._environ.get(secret.name)

    def set(self, secret: SecretId, value: str) -> None:
        raise SecretError(
            f"env://{secret.name} is read from the environment of the regcache process; "
            f"set {secret.name} there instead",
            code="SecretNotWritable",
        )

    def delete(self, secret: SecretId) -> bool:
        self.set(secret, "")
        return False


class SecretResolver:
    """Resolves secret ids of every scheme; the one object the engine asks for secret values."""

    def __init__(self, stores: Mapping[str, SecretStore] | None = None) -> None:
        self._stores: Mapping[str, SecretStore] = stores or {
            "keyring": KeyringSecretStore(),
            "env": EnvSecretStore(),
        }

    def get(self, secret_id: str) -> str:
        """The value behind ``secret_id``; raises SecretError(code=SecretNotFound) when absent."""
        secret = SecretId.parse(secret_id)
        value = self._stores[secret.scheme].get(secret)
        if value is None:
            hint = (f"store it with `regcache secret set {secret}`" if secret.scheme == "keyring"
                    else f"set the environment variable {secret.name} for the regcache process")
            raise SecretError(f"secret {secret} not found: {hint}", code="SecretNotFound")
        return value

    def set(self, secret_id: str, value: str) -> None:
        if not value:
            raise ValidationError("refusing to store an empty secret value", field="value")
        secret = SecretId.parse(secret_id)
        self._stores[secret.scheme].set(secret, value)

    def delete(self, secret_id: str) -> bool:
        secret = SecretId.parse(secret_id)
        return self._stores[secret.scheme].delete(secret)
