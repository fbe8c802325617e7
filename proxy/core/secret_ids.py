"""Secret ids: ``keyring://SERVICE/NAME`` or ``env://VAR``, the only form of a secret the database holds."""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.text import check_printable

_KEYRING_RE = re.compile(r"keyring://([^/\s]+)/(\S+)")
_ENV_RE = re.compile(r"env://([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class SecretId:
    """A parsed secret URI."""

    scheme: str  # "keyring" or "env"
    service: str  # keyring service; empty for env
    name: str  # keyring username / environment variable

    def __str__(self) -> str:
        return f"keyring://{self.service}/{self.name}" if self.scheme == "keyring" else f"env://{self.name}"

    @classmethod
    def parse(cls, value: str, field: str | None = None) -> SecretId:
        value = check_printable(value, field, field or "a secret id").strip()
        if m := _KEYRING_RE.fullmatch(value):
            return cls("keyring", m.group(1), m.group(2))
        if m := _ENV_RE.fullmatch(value):
            return cls("env", "", m.group(1))
        # never quoted back: what was typed may be the secret itself, pasted where its id belongs
        raise ValidationError(
            f"{field or 'a secret id'} must be a secret id, keyring://SERVICE/NAME or env://VARIABLE, not a value: "
            f"store the value with `regcache secret set keyring://regcache/NAME`", field=field
        )
