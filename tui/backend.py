"""What the TUI reads and changes, through the engine's API only (never SQL or HTTP).

One ``Backend`` serialises calls from Textual's worker threads onto the engine's single SQLite
connection. Tests construct the app with a Backend over a temporary state directory and a fake
proxy status, so screens render deterministic data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.statistics import CacheStatistics

T = TypeVar("T")


class Backend:
    """The engine facade for the UI: control plane (configuration) and statistics (what happened)."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self.stats = CacheStatistics(control.store)
        self.home: Path = control.store.home
        self._lock = threading.Lock()

    @classmethod
    def open(cls, home: str | Path | None = None, secrets: SecretResolver | None = None) -> Backend:
        return cls(ControlPlane.open(home, secrets))

    def call(self, fn: Callable[[Backend], T]) -> T:
        """Run ``fn(self)`` holding the lock: call it from a worker thread, never the UI loop."""
        with self._lock:
            return fn(self)

    def close(self) -> None:
        with self._lock:
            self.control.close()


@dataclass(frozen=True, slots=True)
class ProxyStatus:
    """What the header and the Overview say about the embedded proxy."""

    address: str
    state: str  # "starting", "running", "stopped"
    error: str | None = None

    @property
    def label(self) -> str:
        if self.state == "running":
            return f"proxy http://{self.address} · running"
        if self.error:
            return f"proxy {self.address} · stopped: {self.error}"
        return f"proxy {self.address} · {self.state}"
