"""Warm an image into the cache, or test what a rule would fetch, through a PullThroughCache.

Both use the proxy's own pull-through code; :class:`regcache.proxy.jobs.operations.Operations` runs
them on the embedded proxy's cache (the TUI) or on one of their own (the CLI), and a `regcache serve`
using the same state directory sees the result (blobs are content-addressed and renamed into place
atomically; temporary files carry the writer's pid).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from regcache.proxy.core.errors import NameUnknown, PullError, ValidationError
from regcache.proxy.core.models import Result, RuleMatch
from regcache.proxy.core.oci import INDEX_TYPES
from regcache.proxy.core.references import is_digest, is_repository_name, is_tag
from regcache.proxy.core.rules import RuleSet
from regcache.proxy.pull.cache import PullThroughCache, compute_digest
from regcache.proxy.secrets import SecretResolver
from regcache.proxy.state.store import AsyncStateStore, StateStore
from regcache.proxy.storage.backend import open_backend
from regcache.proxy.storage.blobs import BlobStore
from regcache.proxy.upstream.client import UpstreamAuthError, UpstreamClient, UpstreamError

Progress = Callable[[int], None]


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


async def warm_image(cache: PullThroughCache, match: RuleMatch, reference: str, platform: str | None = "linux/amd64",
                     *, on_total: Callable[[int], None] | None = None,
                     on_progress: Progress | None = None) -> WarmResult:
    """Fetch the manifest(s) and blobs of ``match.repository:reference`` through ``cache``."""
    top = await cache.manifest(match, reference, [])
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
        images = [await cache.manifest(match, e["digest"], [], count_pull=False) for e in chosen]
    digests: dict[str, int] = {}
    for manifest in images:
        doc = json.loads(manifest.content)
        for descriptor in [doc.get("config"), *doc.get("layers", [])]:
            if descriptor:
                digests[descriptor["digest"]] = int(descriptor.get("size") or 0)
    if on_total:
        on_total(sum(digests.values()))
    fetched = cached = 0
    for digest in digests:
        result, size = await _fetch_blob(cache, match, digest, on_progress)
        if result is Result.MISS:
            fetched += size
        else:
            cached += size
    manifests = 1 + (len(images) if top.media_type in INDEX_TYPES else 0)
    return WarmResult(match.repository, reference, top.digest, manifests, len(digests), fetched, cached)


async def _fetch_blob(cache: PullThroughCache, match: RuleMatch, digest: str,
                      on_progress: Progress | None) -> tuple[Result, int]:
    blob = await cache.blob(match, digest)
    if blob.downloading:
        total = 0
        async for chunk in blob.chunks():
            total += len(chunk)
            if on_progress:
                on_progress(len(chunk))
        return blob.result, total
    if on_progress:
        on_progress(blob.size or 0)
    return blob.result, blob.size or 0


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
