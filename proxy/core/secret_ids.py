"""Secret ids: ``keyring://SERVICE/NAME``, ``env://VAR`` or ``file:///PATH``, the only form of a secret the
database holds; and what a process can tell about one without showing its value."""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.text import check_printable

_KEYRING_RE = re.compile(r"keyring://([^/\s]+)/(\S+)")
_ENV_RE = re.compile(r"env://([A-Za-z_][A-Za-z0-9_]*)")
#: an absolute path (``file:///run/credentials/regcache.service/hub-token``); no host part, no spaces
_FILE_RE = re.compile(r"file://(/\S*[^/\s])")

#: the forms a secret id takes, for messages
SECRET_ID_FORMS = "keyring://SERVICE/NAME, env://VARIABLE or file:///PATH"


@dataclass(frozen=True, slots=True)
class SecretId:
    """A parsed secret URI."""

    scheme: str  # "keyring", "env" or "file"
    service: str  # keyring service; empty for env and file
    name: str  # keyring username / environment variable / absolute file path

    def __str__(self) -> str:
        if self.scheme == "keyring":
            return f"keyring://{self.service}/{self.name}"
        return f"{self.scheme}://{self.name}"

    @property
    def ours(self) -> bool:
        """Whether regcache writes and deletes the value (keyring) rather than only reading it (env, file)."""
        return self.scheme == "keyring"

    @classmethod
    def parse(cls, value: str, field: str | None = None) -> SecretId:
        value = check_printable(value, field, field or "a secret id").strip()
        if m := _KEYRING_RE.fullmatch(value):
            return cls("keyring", m.group(1), m.group(2))
        if m := _ENV_RE.fullmatch(value):
            return cls("env", "", m.group(1))
        if m := _FILE_RE.fullmatch(value):
            if any(part in (".", "..") for part in m.group(1).split("/")):
                raise ValidationError(f"{field or 'a secret id'}: a file:// path must not contain . or .. parts; "
                                      f"give the file's plain absolute path", field=field)
            return cls("file", "", m.group(1))
        if value.startswith("file://"):
            raise ValidationError(f"{field or 'a secret id'}: a file:// secret id needs an absolute path to a file, "
                                  f"e.g. file:///run/credentials/regcache.service/hub-token", field=field)
        # never quoted back: what was typed may be the secret itself, pasted where its id belongs
        raise ValidationError(
            f"{field or 'a secret id'} must be a secret id, {SECRET_ID_FORMS}, not a value: "
            f"store the value with `regcache secret set keyring://regcache/NAME`", field=field
        )


@dataclass(frozen=True, slots=True)
class SecretAccess:
    """Whether this process can read a secret now, and why (never its value).

    ``reason`` is one line: what was found (``readable``), or what stands in the way and what to do.
    ``warning`` is set when the secret is readable but exposed (a file its group can read).
    """

    secret_id: str
    readable: bool
    reason: str
    code: str | None = None  # the SecretError code when not readable
    warning: str | None = None
