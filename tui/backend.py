"""What the TUI reads and changes, through the engine's API only (never SQL or HTTP).

One ``Backend`` serialises calls from Textual's worker threads onto the engine's single SQLite
connection. Tests construct the app with a Backend over a temporary state directory and a fake
proxy status, so screens render deterministic data.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.statistics import CacheStatistics

if TYPE_CHECKING:
    from regcache.proxy.jobs.operations import Operations
    from regcache.proxy.pull.cache import LoginCheck
    from regcache.proxy.server import EmbeddedProxy
    from regcache.proxy.storage.fleet import FleetView

#: where the Overview reads the fleet from: ``source(backend)`` (tests give a fixed one)
FleetSource = Callable[["Backend"], "FleetView | None"]

T = TypeVar("T")


class Backend:
    """The engine facade for the UI: control plane (configuration) and statistics (what happened)."""

    def __init__(self, control: ControlPlane, fleet_source: FleetSource | None = None) -> None:
        self.control = control
        self._fleet_source = fleet_source
        self.stats = CacheStatistics(control.store)
        self.home: Path = control.store.home
        self._lock = threading.Lock()
        #: the embedded proxy whose engine runs the jobs (None: each job opens an engine of its own)
        self.proxy: EmbeddedProxy | None = None

    @classmethod
    def open(cls, home: str | Path | None = None, secrets: SecretResolver | None = None) -> Backend:
        return cls(ControlPlane.open(home, secrets))

    def call(self, fn: Callable[[Backend], T]) -> T:
        """Run ``fn(self)`` holding the lock: call it from a worker thread, never the UI loop."""
        with self._lock:
            return fn(self)

    def run_job(self, fn: Callable[[Operations], Awaitable[T]]) -> T:
        """Run ``fn(operations)`` (warm, rule test, tag sync, gc) and wait for it: call from a worker thread.

        With the embedded proxy's engine running, the job runs in its loop (sharing its downloads);
        without it (tests, or an engine that failed to start), on an engine of its own. Never under the
        lock that :meth:`call` holds, so the screens stay live while a job runs.
        """
        if self.proxy is not None and self.proxy.engine_running:
            return self.proxy.call(fn)
        from regcache.proxy.jobs.operations import Operations

        return Operations.run_alone(self.home, self.control.secrets, fn)

    def check_credential_set(self, name: str) -> LoginCheck:
        """Log in to the upstream with credential set ``name`` for real and record the answer as its health
        (the Credentials blade's re-check, ``r``): call it from a worker thread. ``.verified`` False: the
        upstream could not tell (unreachable, no login asked, secrets unreadable here); ``.message`` says why."""
        return self.run_job(lambda ops: ops.check_credential_set(name))

    def fleet(self) -> FleetView | None:
        """The fleet this node is configured for, as `regcache fleet status` reads it from the bucket: call it from
        a worker thread. None when the storage is not a bucket or no fleet is configured (fleet-address and
        fleet-secret). Raises RegcacheError when the bucket cannot be read."""
        if self._fleet_source is not None:
            return self._fleet_source(self)
        settings = self.call(lambda b: b.control.fleet_settings())
        if settings is None or not settings.configured:
            return None
        if self.proxy is not None and self.proxy.engine_running:  # the engine's connection to the bucket
            return self.proxy.call(lambda ops: ops.fleet(settings))
        import anyio

        from regcache.proxy.storage.fleet import read_fleet_in

        return anyio.run(read_fleet_in, settings.storage, self.control.secrets, settings.node_id,
                         settings.fingerprint)

    def cached_tags(self, repository: str) -> list[tuple[str, str]]:
        """(tag, digest) of every cached tag of ``repository``: call it inside :meth:`call`."""
        return self.control.store.tagged(repository)

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
