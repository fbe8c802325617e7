"""Prometheus metrics of one proxy: requests, hits, misses, stale serves, bytes, upstream errors, latency.

Each proxy has its own CollectorRegistry (no process-global state), exposed at ``/metrics`` on the
registry's address, or on its own address with ``--metrics-listen``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from regcache.proxy.core.models import NOT_FETCHED_HERE, PullEvent

CONTENT_TYPE = CONTENT_TYPE_LATEST
NO_RULE = "-"


class ProxyMetrics:
    """The proxy's counters; ``observe`` takes every pull event."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("regcache_requests", "Manifest and blob requests answered",
                                ["rule", "kind", "result"], registry=r)
        self.hits = Counter("regcache_hits", "Requests served from the cache", ["rule"], registry=r)
        self.misses = Counter("regcache_misses", "Requests fetched from the upstream", ["rule"], registry=r)
        self.stale = Counter("regcache_stale_serves", "Cached tags served while the upstream failed",
                             ["rule"], registry=r)
        self.bytes_served = Counter("regcache_bytes_served", "Bytes sent to clients", ["rule"], registry=r)
        self.bytes_fetched = Counter("regcache_bytes_fetched", "Blob bytes fetched from upstreams", ["rule"],
                                     registry=r)
        self.upstream_errors = Counter("regcache_upstream_errors", "Failed upstream requests",
                                       ["rule", "upstream", "kind"], registry=r)
        self.bucket_errors = Counter("regcache_bucket_errors", "Failed calls to the shared bucket (s3 storage); "
                                     "failed uploads mean blobs are not stored", ["action"], registry=r)
        self.events_dropped = Counter("regcache_events_dropped", "Pull events not logged: the writer fell behind "
                                      "(the Activity log and statistics miss them)", registry=r)
        self.peer_fetches = Counter("regcache_fleet_peer_fetches", "Cold blobs streamed from the fleet member "
                                    "that downloads them", registry=r)
        self.own_downloads = Counter("regcache_fleet_own_downloads", "Cold blobs this node downloaded itself "
                                     "although another member owns them", ["reason"], registry=r)
        self.peer_serves = Counter("regcache_fleet_peer_serves", "Blobs this node streamed to other members",
                                   registry=r)
        self.peer_manifests = Counter("regcache_fleet_peer_manifests", "Manifests and tag revalidations answered "
                                      "by the fleet member that owns them", registry=r)
        self.own_manifests = Counter("regcache_fleet_own_manifests", "Manifests and tag revalidations this node "
                                     "asked its upstream itself although another member owns them", ["reason"],
                                     registry=r)
        self.peer_manifest_serves = Counter("regcache_fleet_peer_manifest_serves", "Manifests and tag "
                                            "revalidations this node answered for other members", registry=r)
        self.latency = Histogram("regcache_request_duration_seconds", "Time to answer a request",
                                 ["rule", "kind"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.fleet_members = Gauge("regcache_fleet_members", "Live fleet members configured as this node, as it "
                                   "sees them (itself included; 0: not in a fleet)", registry=r)
        self.cache_bytes = Gauge("regcache_cache_size_bytes", "Bytes of blobs in the cache", registry=r)
        self.cache_blobs = Gauge("regcache_cached_blobs", "Blobs in the cache", registry=r)
        #: (rule, kind, result) -> the series its events move: labels() validates and locks on every call, and
        #: every manifest and blob request observes one event (as many entries as the series they name)
        self._series: dict[tuple[str, str, str], tuple[Any, ...]] = {}

    def observe(self, event: PullEvent) -> None:
        key = (event.rule or NO_RULE, event.kind, event.result)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._series_of(*key)
        requests, latency, outcome, served = series
        requests.inc()
        latency.observe(event.duration_ms / 1000)
        if outcome is not None:
            outcome.inc()
        if event.result == "miss" and event.kind == "blob" and event.detail not in NOT_FETCHED_HERE:
            self.bytes_fetched.labels(key[0]).inc(event.bytes)  # a download: labels() is not what it costs
        if served is not None:
            served.inc(event.bytes)

    def _series_of(self, rule: str, kind: str, result: str) -> tuple[Any, ...]:
        """The labelled series an event of this rule, kind and result moves: requests, latency, its outcome's
        counter (hits, misses, stale serves) and bytes served (None where it moves none)."""
        outcome = {"hit": self.hits, "miss": self.misses, "stale": self.stale}.get(result)
        return (self.requests.labels(rule, kind, result), self.latency.labels(rule, kind),
                None if outcome is None else outcome.labels(rule),
                None if result == "error" else self.bytes_served.labels(rule))

    def peer_fetch(self) -> None:
        self.peer_fetches.inc()

    def own_download(self, reason: str) -> None:
        self.own_downloads.labels(reason).inc()

    def peer_serve(self) -> None:
        self.peer_serves.inc()

    def peer_manifest(self) -> None:
        self.peer_manifests.inc()

    def own_manifest(self, reason: str) -> None:
        self.own_manifests.labels(reason).inc()

    def peer_manifest_serve(self) -> None:
        self.peer_manifest_serves.inc()

    def upstream_error(self, rule: str, upstream: str, kind: str) -> None:
        self.upstream_errors.labels(rule, upstream, kind).inc()

    def bucket_error(self, action: str) -> None:
        self.bucket_errors.labels(action).inc()

    def set_cache_size(self, blob_bytes: int, blobs: int) -> None:
        self.cache_bytes.set(blob_bytes)
        self.cache_blobs.set(blobs)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
