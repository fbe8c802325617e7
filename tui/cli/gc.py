"""`regcache gc`: eviction and stale bucket uploads, now."""

from __future__ import annotations

from datetime import timedelta

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.units import format_count, format_duration
from regcache.proxy.storage.objectstore import DEFAULT_STALE_UPLOAD_AGE
from regcache.tui.cli.common import (
    current_query,
    emit,
    engine_command,
    output_option,
    run_job,
    say,
)


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would be evicted (and aborted); change nothing.")
@click.option("--min-idle", default="60s", show_default=True, metavar="DURATION",
              help="Keep blobs pulled within this long (clients may be reading them).")
@click.option("--stale-uploads-after", default=format_duration(DEFAULT_STALE_UPLOAD_AGE.total_seconds()),
              show_default=True, metavar="DURATION",
              help="s3 storage: abort a multipart upload of a node on another host once this old (one whose "
                   "node on this host is gone is aborted at once, one no node owns after 10 minutes).")
@output_option
@engine_command
def gc(control: ControlPlane, dry_run: bool, min_idle: str, stale_uploads_after: str, fmt: str) -> None:
    """Evict by per-rule retention and the max-size limit, least recently pulled first.

    With s3 storage, also deletes the evicted blobs from the bucket and aborts abandoned multipart uploads.
    """
    from regcache.proxy.core.units import format_size, parse_duration

    idle = parse_duration(min_idle, "min-idle")
    stale_after = timedelta(seconds=parse_duration(stale_uploads_after, "stale-uploads-after"))
    report = run_job(control, lambda ops: ops.collect_garbage(min_idle=idle, stale_uploads_after=stale_after,
                                                              dry_run=dry_run))
    plan, freed = report.plan, report.bytes_freed
    rows = [{"digest": c.digest, "size": c.size, "sizeText": format_size(c.size), "reason": c.reason,
             "lastPull": c.last_access.isoformat() if c.last_access else None} for c in plan.candidates]
    uploads = None if report.stale_uploads is None else [
        {"key": key, "uploadId": upload_id, "reason": why, "initiated": initiated.isoformat()}
        for key, upload_id, initiated, why in report.stale_uploads]
    result = {"dryRun": dry_run, "evicted": rows, "bytesFreed": freed, "cacheBytes": plan.cache_bytes,
              "maxSize": plan.max_size, "expiredRepositories": list(plan.expired_repositories)}
    if uploads is not None:
        result["abortedUploads"] = uploads
    if fmt in ("json", "yaml") or current_query() is not None:
        emit(result, (), fmt)
        return
    emit(result, (("DIGEST", "digest"), ("SIZE", "sizeText"), ("REASON", "reason")), fmt, rows=rows)
    verb = "would free" if dry_run else "freed"
    limit = f" (max-size {format_size(plan.max_size)})" if plan.max_size is not None else ""
    say(f"{verb} {format_size(freed)} in {format_count(len(plan.candidates), 'blob')}; cache "
        f"{format_size(plan.cache_bytes)} -> {format_size(plan.cache_bytes - freed)}{limit}")
    if uploads is not None:
        if uploads:
            if fmt == "table":
                click.echo()  # apart from the evicted blobs' table
            emit(uploads, (("UPLOAD KEY", "key"), ("REASON", "reason")), fmt)
        verb = "would abort" if dry_run else "aborted"
        say(f"{verb} {format_count(len(uploads), 'stale multipart upload')} in {report.storage}")
