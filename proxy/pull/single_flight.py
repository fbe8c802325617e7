"""SingleFlight: concurrent calls with the same key share one run of the work and its outcome.

Used for upstream manifest fetches, so that eight clients pulling one tag at once cost the upstream
one manifest GET (Docker Hub counts those against its pull limit), as blobs already cost one download.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")


class _Flight:
    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: Exception | None = None
        self.cancelled = False


class SingleFlight(Generic[T]):
    """Runs ``work`` once per key at a time; callers arriving meanwhile wait for and share its outcome.

    If the caller running the work is cancelled (its client went away), a waiting caller runs it anew
    rather than inheriting the cancellation.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.cancelled:
                continue
            if flight.error is not None:  # one object for every waiter: keep its traceback from piling up
                raise flight.error.with_traceback(None)
            return flight.result
        flight = _Flight()
        self._flights[key] = flight
        try:
            flight.result = await work()
            return flight.result
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:
            flight.cancelled = True
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    def __len__(self) -> int:
        return len(self._flights)
