"""regcache's engine, in layers (each a subpackage; an import-linter contract keeps imports pointing down):

``core`` (pure records, grammar, rules) <- ``state`` | ``secrets`` | ``upstream`` <- ``storage`` <-
``pull`` | ``config`` <- ``jobs`` <- ``http`` <- ``server``.

This module re-exports the public API lazily (PEP 562), so ``import regcache.proxy`` costs nothing
until a name is used. Never imports Textual or ``regcache.tui``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ControlPlane": "regcache.proxy.config.control",
    "AuthPolicy": "regcache.proxy.core.models",
    "CacheRule": "regcache.proxy.core.models",
    "CredentialHealth": "regcache.proxy.core.models",
    "CredentialSet": "regcache.proxy.core.models",
    "HealthStatus": "regcache.proxy.core.models",
    "RuleMatch": "regcache.proxy.core.models",
    "Upstream": "regcache.proxy.core.models",
    "ConflictError": "regcache.proxy.core.errors",
    "KeyringUnavailableError": "regcache.proxy.core.errors",
    "LimitError": "regcache.proxy.core.errors",
    "NotFoundError": "regcache.proxy.core.errors",
    "RegcacheError": "regcache.proxy.core.errors",
    "SecretError": "regcache.proxy.core.errors",
    "StateError": "regcache.proxy.core.errors",
    "ValidationError": "regcache.proxy.core.errors",
    "MAX_RULES": "regcache.proxy.core.rules",
    "RuleSet": "regcache.proxy.core.rules",
    "BUILTIN_UPSTREAMS": "regcache.proxy.core.catalogue",
    "UpstreamCatalogue": "regcache.proxy.core.catalogue",
    "StateStore": "regcache.proxy.state.store",
    "resolve_home": "regcache.proxy.state.store",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from regcache.proxy.config.control import ControlPlane
    from regcache.proxy.core.catalogue import BUILTIN_UPSTREAMS, UpstreamCatalogue
    from regcache.proxy.core.errors import (
        ConflictError,
        KeyringUnavailableError,
        LimitError,
        NotFoundError,
        RegcacheError,
        SecretError,
        StateError,
        ValidationError,
    )
    from regcache.proxy.core.models import (
        AuthPolicy,
        CacheRule,
        CredentialHealth,
        CredentialSet,
        HealthStatus,
        RuleMatch,
        Upstream,
    )
    from regcache.proxy.core.rules import MAX_RULES, RuleSet
    from regcache.proxy.state.store import StateStore, resolve_home


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'regcache.proxy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
