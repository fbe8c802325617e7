"""Secret ids and the stores behind them; secret values never leave this module but to the caller.

A secret id is a URI:

* ``keyring://SERVICE/NAME`` -- ``keyring.get_password(SERVICE, NAME)`` (the Key Vault analogue);
* ``env://VAR`` -- the process environment (for containers and CI; weaker: visible to anything
  that can read the process's environment);
* ``file:///PATH`` -- a file's content, one trailing line break dropped (mounted secrets: systemd
  credentials, Kubernetes and compose secrets); refused when others could have written it.

There is never a silent plaintext fallback: with no usable keyring backend, reading or writing a
``keyring://`` secret raises :class:`KeyringUnavailableError` naming the ways out.

No read ever prompts unless the resolver was made ``interactive`` (a CLI command on a terminal): a
keyring backend that asks for a password on the terminal (keyrings.alt's EncryptedKeyring calls
``getpass``) would write over the TUI's screen, steal its keystrokes, or hang the proxy. Such a backend
is unlocked once per process with :meth:`SecretResolver.keyring_lock` (the TUI's start-up modal); until
then its secrets fail with the code ``KeyringLocked`` and a message naming the unattended choices.
"""

from __future__ import annotations

import getpass
import logging
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from regcache.proxy.core.errors import KeyringUnavailableError, SecretError, ValidationError
from regcache.proxy.core.secret_ids import SecretAccess, SecretId
from regcache.proxy.core.settings import DEFAULT_SECRET_FILE_MAX_SIZE, SECRET_FILE_MAX_SIZE_SETTING
from regcache.proxy.core.units import format_size

log = logging.getLogger("regcache.secrets")

#: what works on a host without a desktop keyring, named in every keyring error
UNATTENDED_CHOICES = (
    "file:///PATH secret ids (a file only you or root can write, e.g. a systemd credential or a mounted "
    "Kubernetes or compose secret), env://VAR secret ids, or an encrypted file keyring (pip install keyrings.alt "
    "pycryptodome; PYTHON_KEYRING_BACKEND=keyrings.alt.file.EncryptedKeyring; the TUI asks for its password "
    "once at start)"
)

NO_KEYRING_HELP = (
    "no usable keyring backend on this host: enable a Secret Service (e.g. gnome-keyring or KeePassXC "
    f"over D-Bus), or use {UNATTENDED_CHOICES}; regcache never falls back to storing secrets in plain text"
)

LOCKED_HELP = (
    "regcache never asks for a keyring password here (the proxy, `regcache serve`, the TUI's screens, or a "
    "command without a terminal): unlock it in the TUI when it asks at start, run the command on a terminal, "
    "or use file:///PATH or env://VAR secret ids for unattended use"
)


class SecretStore(Protocol):
    """Where the values behind one scheme of secret ids live."""

    def read(self, secret: SecretId, prompt: bool = False) -> tuple[str | None, str | None]:
        """The value (``None`` when there is no such secret) and a warning about its exposure, if any.

        ``prompt``: the caller is a command on a terminal, which may ask for a keyring's password once.
        """

    def set(self, secret: SecretId, value: str, prompt: bool = False) -> None:
        """Store ``value``."""

    def delete(self, secret: SecretId) -> bool:
        """Remove the secret; False when there was none."""


# -- keyring ---------------------------------------------------------------------------------------

class _PromptRefused(Exception):
    """A keyring backend tried to ask for a password where nobody may be asked."""


_guard_lock = threading.Lock()
_guard_depth = 0
_saved_getpass: Any = None


def _refuse_prompt(prompt: str = "", stream: Any = None) -> str:
    raise _PromptRefused(prompt)


@contextmanager
def _prompts_refused() -> Iterator[None]:
    """While inside, ``getpass.getpass`` raises instead of reading the terminal (keyring backends call it).

    Process-wide (a backend looks ``getpass.getpass`` up when it calls it), counted so that threads of the
    proxy and of the TUI may overlap; nothing in those processes prompts on purpose.
    """
    global _guard_depth, _saved_getpass
    with _guard_lock:
        if _guard_depth == 0:
            _saved_getpass, getpass.getpass = getpass.getpass, _refuse_prompt
        _guard_depth += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_depth -= 1
            if _guard_depth == 0:
                getpass.getpass, _saved_getpass = _saved_getpass, None


def _members(backend: Any) -> list[Any]:
    """The backends that answer for ``backend``: the chain of a chainer, else itself."""
    from keyring.backends.chainer import ChainerBackend

    return list(backend.backends) if isinstance(backend, ChainerBackend) else [backend]


def _is_plaintext(backend: Any) -> bool:
    return any("plaintext" in cls.__name__.lower() for cls in type(backend).__mro__)


def _needs_password(backend: Any) -> bool:
    """A keyrings.alt-style encrypted file keyring whose key this process does not hold yet."""
    return callable(getattr(type(backend), "_unlock", None)) and "keyring_key" not in vars(backend)


def _is_locked(backend: Any) -> bool:
    """Reading it would ask for its password: it needs one and its file exists (a missing file reads as empty)."""
    if not _needs_password(backend):
        return False
    try:
        return bool(backend._check_file())
    except Exception:  # an unreadable or foreign file: reading it fails clearly later
        return False


def _describe(backend: Any) -> str:
    path = getattr(backend, "file_path", None)
    return f"the {type(backend).__name__} at {path}" if path else f"the keyring backend {type(backend).__name__}"


def _unlock(backend: Any, password: str) -> None:
    """Give an encrypted file keyring its password, checked against the keyring's reference entry."""
    backend.keyring_key = password
    try:
        ok = backend.get_password("keyring-setting", "password reference") == "password reference value"
    except Exception:  # a wrong key fails the decryption (AssertionError, ValueError, UnicodeDecodeError)
        ok = False
    if not ok:
        vars(backend).pop("keyring_key", None)
        raise SecretError(f"wrong password for {_describe(backend)}; nothing was unlocked", code="KeyringLocked")


class KeyringLock:
    """Encrypted keyring backends of this process that need their password before a secret can be read."""

    def __init__(self, backends: list[Any]) -> None:
        self._backends = backends

    @property
    def description(self) -> str:
        """What is locked, e.g. ``the EncryptedKeyring at /root/.local/share/python_keyring/crypted_pass.cfg``."""
        return "; ".join(_describe(b) for b in self._backends)

    def unlock(self, password: str) -> None:
        """Unlock every locked backend with ``password`` (for this process); SecretError when it is wrong."""
        if not password:
            raise SecretError("type the keyring's password (or press Esc to go on without it)", code="KeyringLocked")
        for backend in self._backends:
            if _needs_password(backend):
                _unlock(backend, password)


class KeyringSecretStore:
    """``keyring://SERVICE/NAME`` through the ``keyring`` library's configured backend."""

    def _backend(self) -> Any:
        # Imported lazily: the keyring library scans entry points at import, which slows
        # every CLI command that never touches a secret.
        import keyring
        from keyring.backends import chainer, fail

        try:
            backend = keyring.get_keyring()
        except ImportError as exc:  # e.g. EncryptedKeyring chosen without pycryptodome installed
            raise KeyringUnavailableError(f"the keyring backend chosen with PYTHON_KEYRING_BACKEND cannot be "
                                          f"loaded ({type(exc).__name__}: {exc}; keyrings.alt's EncryptedKeyring "
                                          f"needs pycryptodome); {NO_KEYRING_HELP}") from None
        except Exception as exc:  # a broken PYTHON_KEYRING_BACKEND setting surfaces here
            raise KeyringUnavailableError(f"{NO_KEYRING_HELP} ({type(exc).__name__})") from None
        if isinstance(backend, fail.Keyring):
            raise KeyringUnavailableError(NO_KEYRING_HELP)
        if not _backend_chosen_explicitly():
            # A backend below priority 1 (e.g. keyrings.alt's plaintext file) is only acceptable when
            # the operator chose it; picked automatically it would be a silent plaintext fallback. So is a
            # chain keyring picked automatically: it writes to the first backend of the chain that accepts.
            if getattr(backend, "priority", 0) < 1:
                raise KeyringUnavailableError(NO_KEYRING_HELP)
            if isinstance(backend, chainer.ChainerBackend) and any(_is_plaintext(b) for b in _members(backend)):
                raise KeyringUnavailableError(
                    f"the keyring library picked a chain of backends that includes a plaintext file "
                    f"({', '.join(type(b).__name__ for b in _members(backend))}); choose one with "
                    f"PYTHON_KEYRING_BACKEND (e.g. keyrings.alt.file.EncryptedKeyring). {NO_KEYRING_HELP}")
        return backend

    def lock(self) -> KeyringLock | None:
        """The backends that need a password before a secret can be read, or None (also with no usable keyring)."""
        try:
            backend = self._backend()
        except SecretError:
            return None
        locked = [b for b in _members(backend) if _is_locked(b)]
        return KeyringLock(locked) if locked else None

    def _call(self, prompt: bool, op, *args):
        from keyring.errors import KeyringError, NoKeyringError, PasswordDeleteError

        backend = self._backend()
        for member in _members(backend):
            if _is_locked(member):
                if not prompt:
                    raise SecretError(f"{_describe(member)} is locked; {LOCKED_HELP}", code="KeyringLocked")
                _unlock(member, getpass.getpass(f"Password for {_describe(member)}: "))
        try:
            if prompt:  # a command on a terminal: the backend may ask (e.g. to create a new encrypted file)
                return op(backend, *args)
            with _prompts_refused():
                return op(backend, *args)
        except NoKeyringError:
            raise KeyringUnavailableError(NO_KEYRING_HELP) from None
        except PasswordDeleteError:
            return False
        except _PromptRefused:
            raise SecretError(f"{_describe(backend)} asked for a password (to create or unlock its file); "
                              f"{LOCKED_HELP}", code="KeyringLocked") from None
        except KeyringError as exc:
            raise SecretError(f"the keyring backend failed ({type(exc).__name__}); check that it is unlocked",
                              code="KeyringUnavailable") from None
        except (EOFError, KeyboardInterrupt):
            raise SecretError(f"no password was given for {_describe(backend)}", code="KeyringLocked") from None
        except Exception as exc:  # a backend's own failure (a damaged file, a wrong key): one line, no traceback
            raise SecretError(f"{_describe(backend)} failed ({type(exc).__name__}); check its file and password",
                              code="KeyringUnavailable") from None

    def read(self, secret: SecretId, prompt: bool = False) -> tuple[str | None, str | None]:
        return self._call(prompt, lambda b, s, n: b.get_password(s, n), secret.service, secret.name), None

    def set(self, secret: SecretId, value: str, prompt: bool = False) -> None:
        self._call(prompt, lambda b, s, n, v: b.set_password(s, n, v), secret.service, secret.name, value)

    def delete(self, secret: SecretId) -> bool:
        return self._call(False, lambda b, s, n: b.delete_password(s, n) or True, secret.service, secret.name)


def _backend_chosen_explicitly() -> bool:
    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return True
    from keyring.util import platform_

    return (platform_.config_root() / "keyringrc.cfg").is_file()


# -- environment -----------------------------------------------------------------------------------

class EnvSecretStore:
    """``env://VAR``: read-only; the value comes from the environment of the regcache process."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def read(self, secret: SecretId, prompt: bool = False) -> tuple[str | None, str | None]:
        return self._environ.get(secret.name), None

    def set(self, secret: SecretId, value: str, prompt: bool = False) -> None:
        raise SecretError(
            f"env://{secret.name} is read from the environment of the regcache process; "
            f"set {secret.name} there instead",
            code="SecretNotWritable",
        )

    def delete(self, secret: SecretId) -> bool:
        raise SecretError(f"env://{secret.name} is not regcache's to delete: it is read from the environment of "
                          f"the regcache process; unset {secret.name} there", code="SecretNotWritable")


# -- files -----------------------------------------------------------------------------------------

def _owner_problem(what: str, st: os.stat_result) -> str | None:
    """Why a file or directory with this status could have been written by someone else, or None."""
    if st.st_uid not in (0, os.geteuid()):
        return f"{what} is owned by uid {st.st_uid}, neither root nor the user regcache runs as (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by its group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


class FileSecretStore:
    """``file:///PATH``: read-only; the file's content with one trailing line break dropped.

    Refused when the file, or the directory holding it (or holding what its link points to), is owned by
    someone other than root or this process's user, or writable by group or others: whoever could write it
    would choose the credentials regcache sends upstream. Bounded by ``secret-file-max-size``; a FIFO or
    device is refused without blocking on it. Readable by every user of the host is refused too (the
    credentials would be no secret); readable by its group is allowed, with a warning once per id.
    """

    def __init__(self, max_size: int = DEFAULT_SECRET_FILE_MAX_SIZE) -> None:
        self.max_size = max_size

    def read(self, secret: SecretId, prompt: bool = False) -> tuple[str | None, str | None]:
        path = secret.name
        for directory in dict.fromkeys((os.path.dirname(path), os.path.dirname(os.path.realpath(path)))):
            try:
                problem = _owner_problem(f"its directory {directory}", os.stat(directory))
            except FileNotFoundError:
                return None, None
            except OSError as exc:
                raise SecretError(f"secret {secret}: its directory {directory} cannot be read "
                                  f"({exc.strerror})", code="SecretNotReadable") from None
            if problem:
                raise SecretError(f"secret {secret} refused: {problem}; keep secret files in a directory only you "
                                  f"or root can write", code="SecretFileUnsafe")
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below as not a regular file)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, None
        except PermissionError:
            raise SecretError(f"secret {secret} cannot be read by this process (permission denied): make it "
                              f"readable by the user regcache runs as (uid {os.geteuid()})",
                              code="SecretNotReadable") from None
        except OSError as exc:
            raise SecretError(f"secret {secret} cannot be opened ({exc.strerror})", code="SecretNotReadable") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SecretError(f"secret {secret} is not a regular file", code="SecretFileUnsafe")
            problem = _owner_problem("the file", st)
            if problem:
                raise SecretError(f"secret {secret} refused: {problem}; make it owned by you or root with mode 0600 "
                                  f"or 0400 (chmod go-w)", code="SecretFileUnsafe")
            if st.st_mode & stat.S_IROTH:
                # every local user could read the upstream's credentials: not a secret any more
                raise SecretError(f"secret {secret} refused: every user of this host can read it (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}); make it 0600 or 0400 (chmod o-r), or 0440 "
                                  f"for a group regcache's user is in (a Kubernetes secret volume: defaultMode: "
                                  f"0400 or 0440; a compose secret: mode: 0400)", code="SecretFileUnsafe")
            data = b""
            while len(data) <= self.max_size:
                chunk = os.read(fd, self.max_size + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise SecretError(f"secret {secret} cannot be read ({exc.strerror})", code="SecretNotReadable") from None
        finally:
            os.close(fd)
        if len(data) > self.max_size:
            raise SecretError(f"secret {secret} is larger than {SECRET_FILE_MAX_SIZE_SETTING} "
                              f"({format_size(self.max_size)}); a secret file holds one password, token or key",
                              code="SecretFileUnsafe")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"secret {secret} is not UTF-8 text", code="SecretNotReadable") from None
        value = value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value
        if not value:
            raise SecretError(f"secret {secret} is empty: write the value into the file", code="SecretNotFound")
        warning = None
        if st.st_mode & stat.S_IRGRP:
            warning = (f"secret {secret} is readable by its group (mode {stat.S_IMODE(st.st_mode):04o}); make it "
                       f"0600 or 0400 (chmod g-r) unless that group is meant to read it")
        return value, warning

    def set(self, secret: SecretId, value: str, prompt: bool = False) -> None:
        raise SecretError(f"{secret} is a read-only source: regcache reads the file and never writes it; write the "
                          f"value into {secret.name} yourself (owned by you or root, mode 0600 or 0400)",
                          code="SecretNotWritable")

    def delete(self, secret: SecretId) -> bool:
        raise SecretError(f"{secret} is not regcache's to delete: it only reads that file; remove {secret.name} "
                          f"yourself", code="SecretNotWritable")


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(secret_id: str, warning: str) -> None:
    with _warned_lock:
        if secret_id in _warned:
            return
        _warned.add(secret_id)
    log.warning("%s", warning)


# -- the resolver ----------------------------------------------------------------------------------

class SecretResolver:
    """Resolves secret ids of every scheme; the one object the engine asks for secret values.

    ``interactive``: a CLI command on a terminal, which may ask once (without echo) for the password of a
    keyring backend that needs one. Every other resolver (the proxy, ``serve``, the TUI) never prompts.
    """

    def __init__(self, stores: Mapping[str, SecretStore] | None = None, interactive: bool = False) -> None:
        defaults: dict[str, SecretStore] = {"keyring": KeyringSecretStore(), "env": EnvSecretStore(),
                                            "file": FileSecretStore()}
        self._stores: Mapping[str, SecretStore] = {**defaults, **(stores or {})}
        self.interactive = interactive

    @property
    def file_max_size(self) -> int:
        store = self._stores["file"]
        return store.max_size if isinstance(store, FileSecretStore) else DEFAULT_SECRET_FILE_MAX_SIZE

    @file_max_size.setter
    def file_max_size(self, value: int) -> None:
        """The ``secret-file-max-size`` setting (the engine sets it from the state database)."""
        store = self._stores["file"]
        if isinstance(store, FileSecretStore):
            store.max_size = value

    def get(self, secret_id: str) -> str:
        """The value behind ``secret_id``; raises SecretError(code=SecretNotFound) when absent."""
        secret = SecretId.parse(secret_id)
        value, warning = self._stores[secret.scheme].read(secret, self.interactive)
        if value is None:
            raise SecretError(f"secret {secret} not found: {_hint(secret)}", code="SecretNotFound")
        if warning:
            _warn_once(str(secret), warning)
        return value

    def check(self, secret_id: str) -> SecretAccess:
        """Whether this process can read ``secret_id`` now, and why; never prompts, never returns the value."""
        try:
            secret = SecretId.parse(secret_id)
        except ValidationError as exc:  # an id stored before ids were checked as they are now
            return SecretAccess(secret_id, False, exc.message, "InvalidSecretId")
        try:
            value, warning = self._stores[secret.scheme].read(secret, False)
        except SecretError as exc:
            return SecretAccess(str(secret), False, exc.message, exc.code)
        if value is None:
            return SecretAccess(str(secret), False, f"not found: {_hint(secret)}", "SecretNotFound")
        return SecretAccess(str(secret), True, "readable" + (f" (warning: {warning})" if warning else ""),
                            warning=warning)

    def keyring_lock(self) -> KeyringLock | None:
        """The keyring backends that need a password before their secrets can be read, or None."""
        store = self._stores["keyring"]
        return store.lock() if isinstance(store, KeyringSecretStore) else None

    def check_writable(self, secret_id: str) -> str:
        """``secret_id`` normalised, or the SecretError saying whose it is when regcache only reads it
        (``env://``, ``file://``): called before asking for a value that could never be stored."""
        secret = SecretId.parse(secret_id)
        if not secret.ours:
            self._stores[secret.scheme].set(secret, "", False)  # raises, naming where the value lives
        return str(secret)

    def set(self, secret_id: str, value: str) -> None:
        if not value:
            raise ValidationError("refusing to store an empty secret value", field="value")
        secret = SecretId.parse(secret_id)
        self._stores[secret.scheme].set(secret, value, self.interactive)

    def delete(self, secret_id: str) -> bool:
        secret = SecretId.parse(secret_id)
        return self._stores[secret.scheme].delete(secret)


def _hint(secret: SecretId) -> str:
    if secret.scheme == "keyring":
        return f"store it with `regcache secret set {secret}`"
    if secret.scheme == "file":
        return f"create {secret.name} holding the value (owned by you or root, mode 0600 or 0400)"
    return f"set the environment variable {secret.name} for the regcache process"
