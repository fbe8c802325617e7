"""The engine's exception tree, documented in one place.

    RegcacheError                  anything the engine refuses or cannot do; ``str()`` is one line
    ├── ValidationError            bad input; ``field`` names the form field it belongs beside
    │   ├── ConflictError          clashes with existing state (duplicate, overlap, in use)
    │   └── LimitError             a quota is reached (1,000 cache rules)
    ├── NotFoundError              a named rule, credential set or upstream does not exist
    ├── SecretError                a secret cannot be read or written; ``code`` is the health code
    │   └── KeyringUnavailableError  no usable keyring backend on this host
    └── StateError                 the state directory or database cannot be used

Messages say what happened and what to do, and never contain a secret value.
"""

from __future__ import annotations


class RegcacheError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ValidationError(RegcacheError):
    """Input refused; ``field`` is the input it concerns (``name``, ``source``, ...)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConflictError(ValidationError):
    """Input that clashes with what is already configured."""


class LimitError(ValidationError):
    """A configured quota is reached."""


class NotFoundError(RegcacheError):
    """A named object does not exist."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SecretError(RegcacheError):
    """A secret could not be read or stored; ``code`` is the credential-health error code."""

    def __init__(self, message: str, code: str = "SecretNotFound") -> None:
        super().__init__(message)
        self.code = code


class KeyringUnavailableError(SecretError):
    """No usable keyring backend: say so and name the ways out."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="KeyringUnavailable")


class StateError(RegcacheError):
    """The state directory or its database cannot be used."""


def unwrap_error(exc: BaseException, types: tuple[type[BaseException], ...] = (RegcacheError,)) -> BaseException:
    """The first error of ``types`` inside (nested) exception groups from task groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup):
        found = next((e for e in exc.exceptions if isinstance(e, (*types, BaseExceptionGroup))), None)
        if found is None:
            return exc
        exc = found
    return exc
