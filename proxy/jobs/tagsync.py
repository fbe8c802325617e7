"""Tag sync: per rule, fetch new or moved tags that match a filter, in the background (ACR's roadmap item).

A static rule syncs its target repository; a wildcard rule syncs the repositories it has cached (it
cannot list a whole upstream registry). Each sync fetches the matching tags through the proxy's own
pull-through code (linux/amd64 of an index) and records its result per repository.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import anyio

from regcache.proxy.core.errors import RegcacheError, UpstreamUnavailable, ValidationError
from regcache.proxy.core.models import CacheRule
from regcache.proxy.core.rules import RuleSet
from regcache.proxy.core.tagfilter import TagFilter
from regcache.proxy.pull.cache import PullThroughCache
from regcache.proxy.state.store import StateStore

log = logging.getLogger("regcache.tagsync")

DEFAULT_INTERVAL = 3600.0


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    rule: str
    repository: str
    result: str  # "ok" or "error"
    fetched: int  # tags that were new or moved
    detail: str


async def sync_rule(cache: PullThroughCache, rule: CacheRule) -> list[SyncOutcome]:
    """Sync every repository of ``rule`` now; records and returns one outcome per repository."""
    from regcache.proxy.jobs.prefetch import warm_image

    if not rule.sync_tags:
        raise ValidationError(f"rule {rule.name!r} has no tag filter: set one with "
                              f"`regcache cache update -n {rule.name} --sync-tags FILTER`", field="sync_tags")
    tag_filter = TagFilter.parse(rule.sync_tags)
    await cache.refresh()  # upstreams and credential sets as configured now
    repositories = ([rule.target_repository] if not rule.is_wildcard else
                    await cache.state.run(lambda s: s.repositories_of_rule(rule.name)))
    outcomes = []
    for repository in repositories:
        match = RuleSet([rule]).match(repository)
        if match is None:
            continue
        try:
            source = cache.source(match)
            tags, stale = await cache.tags(match)
            if stale:
                raise UpstreamUnavailable(f"upstream {match.upstream.login_server} is unavailable; "
                                          f"the tag list is the cached one")
            wanted = [t for t in tags if tag_filter.matches(t)]
            fetched = 0
            for tag in wanted:
                before = await cache.state.run(StateStore.tag, match.repository, source, tag)
                result = await warm_image(cache, match, tag)
                if before is None or before[0] != result.digest:
                    fetched += 1
            outcome = SyncOutcome(rule.name, repository, "ok", fetched,
                                  f"{len(wanted)} of {len(tags)} tags match; {fetched} new or moved fetched")
        except RegcacheError as exc:
            outcome = SyncOutcome(rule.name, repository, "error", 0, str(exc))
        outcomes.append(outcome)
        await cache.state.run(StateStore.record_tag_sync, outcome.rule, outcome.repository, outcome.result,
                              outcome.fetched, outcome.detail)
        log.info("tag sync %s %s: %s (%s)", rule.name, repository, outcome.result, outcome.detail)
    return outcomes


def due(rule: CacheRule, last: datetime | None, now: datetime) -> bool:
    if not rule.sync_tags:
        return False
    interval = rule.sync_interval or DEFAULT_INTERVAL
    return last is None or last <= now - timedelta(seconds=interval)


async def run_tag_sync(cache: PullThroughCache, tick: float = 10.0) -> None:
    """Sync rules whose interval has passed, for as long as the proxy serves (its owner cancels it)."""
    while True:
        try:
            rules, syncs = await cache.state.run(lambda s: (s.cache_rules(), s.tag_syncs()))
            last: dict[str, datetime] = {}
            for record in syncs:
                if record.synced_at is not None:
                    last[record.rule] = min(last.get(record.rule, record.synced_at), record.synced_at)
            now = datetime.now(timezone.utc)
            for rule in rules:
                if due(rule, last.get(rule.name), now):
                    await sync_rule(cache, rule)
        except Exception:  # one bad round must not stop the next one, nor the proxy
            log.exception("tag sync failed")
        await anyio.sleep(tick)
