"""regcache's engine: rules, upstreams, state, secrets and (later) the registry proxy.

Never imports Textual or the ``tui`` package (checked by an import-linter contract).
"""

from .control import ControlPlane
from .errors import (
    ConflictError,
    KeyringUnavailableError,
    LimitError,
    NotFoundError,
    RegcacheError,
    SecretError,
    StateError,
    ValidationError,
)
from .models import (
    AuthPolicy,
    CacheRule,
    CredentialHealth,
    CredentialSet,
    HealthStatus,
    RuleMatch,
    Upstream,
)
from .rules import MAX_RULES, RuleSet
from .store import StateStore, resolve_home
from .upstreams import BUILTIN_UPSTREAMS, UpstreamCatalogue

__all__ = [
    "AuthPolicy", "BUILTIN_UPSTREAMS", "CacheRule", "ConflictError", "ControlPlane", "CredentialHealth",
    "CredentialSet", "HealthStatus", "KeyringUnavailableError", "LimitError", "MAX_RULES", "NotFoundError",
    "RegcacheError", "RuleMatch", "RuleSet", "SecretError", "StateError", "StateStore", "Upstream",
    "UpstreamCatalogue", "ValidationError", "resolve_home",
]
