"""Warm an image into the cache, or test what a rule would fetch, through a PullThroughCache.

Both use the proxy's own pull-through code; :class:`regcache.proxy.jobs.operations.Operations` runs
them on the embedded proxy's cache (the TUI) or on one of their own (the CLI), and a `regcache serve`
using the same state directory sees the result (blobs are content-addressed and renamed into place
atomically; temporary files carry the writer's pid).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import anyio

from regcache.proxy.core.errors import NameUnknown, PullError, ValidationError
from regcache.proxy.core.models import PullEvent, Result, RuleMatch
from regcache.proxy.core.oci import INDEX_TYPES
from regcache.proxy.core.references import is_digest, is_repository_name, is_tag
from regcache.proxy.core.rules import RuleSet
from regcache.proxy.pull.cache import PullThroughCache, ServedManifest, compute_digest
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import AsyncStateStore, StateStore
from regcache.proxy.storage.backend import open_backend
from regcache.proxy.storage.blobs import BlobStore
from regcache.proxy.upstream.client import UpstreamAuthError, UpstreamClient, UpstreamError


def parse_image(image: str) -> tuple[str, str]:
    """``team/app:1.0`` or ``team/app@sha256:...`` -> (repository, reference); the tag defaults to latest."""
    if "@" in image:
        repository, _, reference = image.partition("@")
    else:
        repository, sep, tag = image.rpartition(":")
        if not sep or "/" in tag:
            repository, reference = image, "latest"
        else:
            reference = tag
    if not is_repository_name(repository) or not (is_tag(reference) or is_digest(reference)):
        raise ValidationError(f"image {image!r} must be TARGET_REPO:TAG or TARGET_REPO@DIGEST, e.g. ubuntu:22.04",
                              field="image")
    return repository, reference


@asynccontextmanager
async def pull_through(home: Path, secrets: SecretResolver | None = None) -> AsyncIterator[PullThroughCache]:
    """A PullThroughCache on ``home`` for the duration of the block (downloads finish inside it)."""
    store = StateStore(home)
    state = AsyncStateStore(store)
    upstream = UpstreamClient()
    try:
        async with open_backend(home, store, secrets) as backend, anyio.create_task_group() as downloads:
            yield PullThroughCache(state, upstream, BlobStore(home, state, downloads, backend), secrets)
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
        store.close()


@dataclass(frozen=True, slots=True)
class WarmResult:
    repository: str
    reference: str
    digest: str
    manifests: int
    blobs: int
    bytes_fetched: int  # downloaded from the upstream now
    bytes_cached: int  # already in the cache


@dataclass(frozen=True, slots=True)
class LayerProgress:
    """One blob (a layer or the config) of a warm: how far, how fast."""

    digest: str
    size: int  # from the manifest's descriptor (the download may differ: the digest is what is checked)
    done: int = 0
    seconds: float = 0.0  # since its transfer started
    state: str = "waiting"  # "waiting", "fetching", "cached" (a hit: nothing downloaded), "fetched", "failed"

    @property
    def rate(self) -> float | None:
        """Bytes per second while fetching or fetched; None before a measurable time passed."""
        return self.done / self.seconds if self.seconds > 0.05 and self.done else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate; 0 when finished, None when unknown."""
        if self.state in ("cached", "fetched", "failed"):
            return 0.0
        rate = self.rate
        return max(self.size - self.done, 0) / rate if rate else None


@dataclass(frozen=True, slots=True)
class WarmProgress:
    """Where a warm is: every layer, the bytes, the rate and the time left for the whole image."""

    image: str
    layers: tuple[LayerProgress, ...]
    seconds: float  # since the blobs started

    @property
    def total(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def done(self) -> int:
        return sum(layer.size if layer.state in ("cached", "fetched") else layer.done for layer in self.layers)

    @property
    def downloaded(self) -> int:
        return sum(layer.done for layer in self.layers if layer.state != "cached")

    @property
    def rate(self) -> float | None:
        """Bytes downloaded per second over the warm so far (cached layers cost no time)."""
        return self.downloaded / self.seconds if self.seconds > 0.05 and self.downloaded else None

    @property
    def eta(self) -> float | None:
        left = max(self.total - self.done, 0)
        if not left:
            return 0.0
        rate = self.rate
        return left / rate if rate else None


#: how often, at most, a warm reports progress while bytes flow (each layer's start and end always are)
PROGRESS_INTERVAL = 0.2
#: the client and User-Agent a warm's events carry: warm traffic is counted like pull traffic
WARM_CLIENT = "local"
WARM_USER_AGENT = "regcache-warm"

OnProgress = Callable[[WarmProgress], None]
Record = Callable[[PullEvent], None]


class _Reporter:
    """Keeps the layers' progress and hands it on, at most every PROGRESS_INTERVAL while bytes flow."""

    def __init__(self, image: str, digests: dict[str, int], on_progress: OnProgress | None) -> None:
        self.image = image
        self.layers = {digest: LayerProgress(digest, size) for digest, size in digests.items()}
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, layer: LayerProgress, force: bool = False) -> None:
        self.layers[layer.digest] = layer
        self.report(force)

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is not None and (force or now - self.last >= PROGRESS_INTERVAL):
            self.last = now
            self.on_progress(WarmProgress(self.image, tuple(self.layers.values()), now - self.started))


async def warm_image(cache: PullThroughCache, match: RuleMatch, reference: str, platform: str | None = "linux/amd64",
                     *, on_progress: OnProgress | None = None, record: Record | None = None) -> WarmResult:
    """Fetch the manifest(s) and blobs of ``match.repository:reference`` through ``cache``.

    ``on_progress`` hears where the blobs are (called in the engine's loop: it must not block);
    ``record`` gets a pull event for each manifest and blob, as a client's pull would (the Activity log,
    the statistics and the metrics count warm traffic too).
    """
    events = _Events(match, record)
    top = await events.manifest(cache.manifest(match, reference, []), reference)
    images = [top]
    if top.media_type in INDEX_TYPES:
        entries = json.loads(top.content).get("manifests", [])
        # "linux/arm64" also names "linux/arm64/v8", as docker's --platform does
        chosen = [e for e in entries if platform is None or _platform(e) == platform
                  or _platform(e).startswith(platform + "/")]
        if not chosen:
            available = ", ".join(sorted({_platform(e) for e in entries}))
            raise ValidationError(f"{match.repository}:{reference} has no {platform} image; it has: {available}",
                                  field="platform")
        images = [await events.manifest(cache.manifest(match, e["digest"], [], count_pull=False), e["digest"])
                  for e in chosen]
    digests: dict[str, int] = {}
    for manifest in images:
        doc = json.loads(manifest.content)
        for descriptor in [doc.get("config"), *doc.get("layers", [])]:
            if descriptor:
                digests[descriptor["digest"]] = int(descriptor.get("size") or 0)
    reporter = _Reporter(f"{match.repository}:{reference}", digests, on_progress)
    reporter.report(force=True)  # every layer known, none started yet
    fetched = cached = 0
    for digest in digests:
        result, size = await _fetch_blob(cache, match, digest, reporter, events)
        if result is Result.MISS:
            fetched += size
        else:
            cached += size
    manifests = 1 + (len(images) if top.media_type in INDEX_TYPES else 0)
    return WarmResult(match.repository, reference, top.digest, manifests, len(digests), fetched, cached)


class _Events:
    """The pull events of one warm, recorded as the registry records a client's (when ``record`` is given)."""

    def __init__(self, match: RuleMatch, record: Record | None) -> None:
        self.match = match
        self.record = record

    def add(self, kind: str, reference: str, result: Result, started: float, size: int = 0,
            detail: str | None = None) -> None:
        if self.record is not None:
            self.record(PullEvent(WARM_CLIENT, "GET", kind, self.match.repository, reference[:200], result,
                                  200 if result is not Result.ERROR else 502, self.match.rule.name, size,
                                  round((time.perf_counter() - started) * 1000, 3), detail,
                                  user_agent=WARM_USER_AGENT))

    async def manifest(self, fetch: Awaitable[ServedManifest], reference: str) -> ServedManifest:
        started = time.perf_counter()
        try:
            served = await fetch
        except PullError as exc:
            self.add("manifest", reference, Result.ERROR, started, detail=exc.message)
            raise
        self.add("manifest", reference, served.result, started, len(served.content), served.detail)
        return served


async def _fetch_blob(cache: PullThroughCache, match: RuleMatch, digest: str, reporter: _Reporter,
                      events: _Events) -> tuple[Result, int]:
    started = time.perf_counter()
    layer = reporter.layers[digest]
    reporter.update(replace(layer, state="fetching"), force=True)
    total = 0
    try:
        blob = await cache.blob(match, digest)
        if blob.downloading:
            async for chunk in blob.chunks():
                total += len(chunk)
                reporter.update(replace(layer, done=total, seconds=time.perf_counter() - started, state="fetching"))
            await blob.wait_kept()  # a warmed layer is one the cache holds, not one still being flushed
        else:
            total = blob.size or 0
    except Exception as exc:
        reporter.update(replace(layer, done=total, seconds=time.perf_counter() - started, state="failed"), force=True)
        message = exc.message if isinstance(exc, PullError) else f"the transfer failed after {total} bytes: {exc}"
        events.add("blob", digest, Result.ERROR, started, total, message)
        raise
    state = "fetched" if blob.result is Result.MISS else "cached"
    reporter.update(replace(layer, done=total, seconds=time.perf_counter() - started, state=state), force=True)
    events.add("blob", digest, blob.result, started, total, blob.detail)
    return blob.result, total


def _platform(entry: dict) -> str:
    p = entry.get("platform") or {}
    return "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


@dataclass(frozen=True, slots=True)
class RuleProbe:
    """What a rule maps an image to upstream, and what the upstream says, nothing cached."""

    rule: str
    image: str
    upstream_reference: str
    credential_set: str | None
    credentials_valid: bool | None  # None: the rule pulls anonymously
    digest: str | None
    media_type: str | None
    served_by: str  # the rule a pull would actually use (a static rule wins over a wildcard)
    cached_digest: str | None
    error: str | None = None


async def probe_rule(cache: PullThroughCache, rule_name: str, image: str) -> RuleProbe:
    """Map ``image`` through rule ``rule_name``, check the credentials and ask the upstream for the digest."""
    repository, reference = parse_image(image)
    await cache.refresh()  # rules, upstreams and credential sets as configured now
    state = cache.state
    rule = await state.run(lambda s: s.cache_rule(rule_name))
    if rule is None:
        raise ValidationError(f"cache rule {rule_name!r} does not exist (see `regcache cache list`)",
                              field="name")
    match = RuleSet([rule]).match(repository)
    if match is None:
        raise ValidationError(f"rule {rule_name!r} does not cover {repository!r}: its target is "
                              f"{rule.target_repository}", field="image")
    try:
        served_by = (await cache.resolve(repository)).rule.name
    except NameUnknown:
        served_by = rule_name
    source = cache.source(match)
    cached = await state.run(lambda s: s.tag(match.repository, source, reference)) if ":" not in reference else None
    probe = partial(RuleProbe, rule=rule_name, image=image, upstream_reference=_ref(str(match.upstream), reference),
                    credential_set=rule.credential_set, served_by=served_by,
                    cached_digest=cached[0] if cached else None)
    try:
        creds = await cache.credentials(rule)
        got = await cache.upstream_call(
            match, creds, lambda up: cache.upstream.manifest(up, match.upstream.path, reference, creds))
    except PullError as exc:
        return probe(credentials_valid=False, digest=None, media_type=None, error=exc.message)
    except UpstreamAuthError as exc:
        return probe(credentials_valid=False, digest=None, media_type=None, error=str(exc))
    except UpstreamError as exc:
        return probe(credentials_valid=None if creds is None else True, digest=None,
                     media_type=None, error=str(exc))
    return probe(credentials_valid=None if creds is None else True,
                 digest=compute_digest(got.content), media_type=got.media_type)


def _ref(repository: str, reference: str) -> str:
    return f"{repository}@{reference}" if ":" in reference else f"{repository}:{reference}"
