"""Event pruning: the pull-event log kept within ``events-max-age`` and ``events-max-count``.

Every pull writes an event, so without pruning any client grows the state database for ever. Pruned
events are first added to roll-up counters (:meth:`StateStore.fold_events`), so the Overview's totals
and the rules' and repositories' hit ratios read the same after pruning. The work is done in small
transactions with a time budget per run, so a large backlog (the first run after an upgrade) never
holds the database for long: the next runs carry on.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import anyio

from regcache.proxy.core.settings import EVENT_LIMIT_SETTINGS, EventLimits
from regcache.proxy.state.store import AsyncStateStore, StateStore

log = logging.getLogger("regcache.pruning")

#: seconds between runs
PRUNE_INTERVAL = 60.0
#: events removed per transaction: a few tens of milliseconds of write lock
BATCH = 5_000
#: seconds of pruning per run at most
RUN_BUDGET = 5.0


def event_limits(store: StateStore) -> EventLimits:
    return EventLimits.from_settings({key: store.setting(key) for key in EVENT_LIMIT_SETTINGS})


def prune_through(store: StateStore, limits: EventLimits, now: datetime | None = None) -> int:
    """The highest event id that ``limits`` prune (0: none). The newest event always stays: SQLite gives the
    next event the highest id plus one, and the Activity log reads on from the last id it has seen."""
    _, newest = store.event_id_range()
    if newest == 0:
        return 0
    now = now or datetime.now(timezone.utc)
    by_count = newest - limits.max_count  # ids are dense: pruning only ever removes the oldest
    by_age = store.last_event_id_before(now - timedelta(seconds=limits.max_age))
    return max(0, min(max(by_count, by_age), newest - 1))


async def prune_events(state: AsyncStateStore, now: datetime | None = None, budget: float = RUN_BUDGET,
                       batch: int = BATCH) -> int:
    """One run: fold the events the limits prune into the roll-ups, batch by batch, for at most ``budget``
    seconds; how many events were pruned."""
    through = await state.run(lambda s: prune_through(s, event_limits(s), now))
    pruned = 0
    deadline = time.monotonic() + budget
    while through and time.monotonic() < deadline:
        removed = await state.run(StateStore.fold_events, through, batch)  # one transaction each
        pruned += removed
        if removed == 0:
            break
    if pruned:
        log.info("pruned %d pull event(s) beyond events-max-age or events-max-count; the statistics keep "
                 "counting them", pruned)
    return pruned


async def run_event_pruning(state: AsyncStateStore, interval: float = PRUNE_INTERVAL) -> None:
    """Prune every ``interval`` seconds, for as long as the proxy serves (its owner cancels it)."""
    while True:
        try:
            await prune_events(state)
        except Exception:  # pruning must not take the proxy down; the next run tries again
            log.exception("pruning the event log failed")
        await anyio.sleep(interval)
