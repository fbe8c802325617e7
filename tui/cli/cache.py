"""`regcache cache ...` (az acr cache) and `regcache warm`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.units import format_count, format_size
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    Failure,
    camel,
    confirm,
    confirmed_delete,
    emit,
    engine_command,
    name_option,
    output_option,
    run_job,
    say,
)
from regcache.tui.output import (
    DETAIL_COLUMNS,
    RULE_COLUMNS,
    rule_details,
    rule_resource,
    rule_usage_resource,
)


def _rule_settings(freshness: str | None, retention: str | None, serve_stale: bool | None,
                   serve_stale_if_deleted: bool | None, sync_tags: str | None = None,
                   sync_interval: str | None = None) -> dict[str, Any]:
    """The settings given on the command line, parsed ("none" clears retention and tag sync)."""
    from regcache.proxy.core.settings import parse_rule_settings

    given = {"freshness": freshness, "retention": retention, "serve_stale_on_error": serve_stale,
             "serve_stale_if_deleted": serve_stale_if_deleted, "sync_tags": sync_tags, "sync_interval": sync_interval}
    return parse_rule_settings({key: value for key, value in given.items() if value is not None})


def rule_setting_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The per-rule operations settings, shared by `cache create` and `cache update`."""
    options = [
        click.option("--freshness", metavar="DURATION",
                     help="Serve a cached tag this long without asking the upstream (e.g. 10m; default 0: "
                          "revalidate with a HEAD on every pull)."),
        click.option("--retention", metavar="DURATION",
                     help="Evict what the rule cached once not pulled for this long (e.g. 30d; none: keep)."),
        click.option("--serve-stale/--no-serve-stale", default=None,
                     help="Serve cached tags while the upstream fails or rate-limits (default on)."),
        click.option("--serve-stale-if-deleted/--no-serve-stale-if-deleted", default=None,
                     help="Serve cached tags the upstream deleted (default off)."),
        click.option("--sync-tags", metavar="FILTER",
                     help="Fetch new or moved tags in the background: 'semver:>=1.2,<2' or a regex such as "
                          "'^3\\.' (none: off)."),
        click.option("--sync-interval", metavar="DURATION", help="How often tags are synced (default 1h)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


# -- cache rules -------------------------------------------------------------------------------

@click.group(context_settings=CONTEXT_SETTINGS)
def cache() -> None:
    """Manage cache rules (az acr cache)."""


@cache.command("create")
@name_option
@click.option("-s", "--source-repo", "source", required=True,
              help="Source repository, LOGIN_SERVER/PATH, e.g. docker.io/library/ubuntu or ghcr.io/acme/*.")
@click.option("-t", "--target-repo", "target", required=True,
              help="Target repository clients pull, e.g. ubuntu, team/* or *.")
@click.option("-c", "--cred-set", "cred_set", help="Credential set for the source registry.")
@rule_setting_options
@output_option
@engine_command
def cache_create(control: ControlPlane, name: str, source: str, target: str, cred_set: str | None,
                 freshness: str | None, retention: str | None, serve_stale: bool | None,
                 serve_stale_if_deleted: bool | None, sync_tags: str | None, sync_interval: str | None,
                 fmt: str) -> None:
    """Create a cache rule."""
    settings = _rule_settings(freshness, retention, serve_stale, serve_stale_if_deleted, sync_tags, sync_interval)
    emit(rule_resource(control.create_rule(name, source, target, cred_set, **settings)), RULE_COLUMNS, fmt)


@cache.command("update")
@name_option
@click.option("-c", "--cred-set", "cred_set", help="Attach this credential set.")
@click.option("--remove-cred-set", is_flag=True, help="Remove the credential set.")
@rule_setting_options
@output_option
@engine_command
def cache_update(control: ControlPlane, name: str, cred_set: str | None, remove_cred_set: bool,
                 freshness: str | None, retention: str | None, serve_stale: bool | None,
                 serve_stale_if_deleted: bool | None, sync_tags: str | None, sync_interval: str | None,
                 fmt: str) -> None:
    """Change the credential set of a cache rule (-c NAME or --remove-cred-set) and/or its settings."""
    settings = _rule_settings(freshness, retention, serve_stale, serve_stale_if_deleted, sync_tags, sync_interval)
    emit(rule_resource(control.update_rule(name, cred_set, remove_cred_set, **settings)), RULE_COLUMNS, fmt)


@cache.command("show")
@name_option
@output_option
@engine_command
def cache_show(control: ControlPlane, name: str, fmt: str) -> None:
    """Show a cache rule: every setting, and what it has cached (repositories, tags, size, hits)."""
    from regcache.proxy.state.statistics import CacheStatistics

    record = rule_resource(control.get_rule(name))
    record["usage"] = rule_usage_resource(CacheStatistics(control.store).repositories(name))
    emit(record, DETAIL_COLUMNS, fmt, rows=rule_details(record))


@cache.command("list")
@output_option
@engine_command
def cache_list(control: ControlPlane, fmt: str) -> None:
    """List cache rules."""
    emit([rule_resource(r) for r in control.list_rules()], RULE_COLUMNS, fmt)


@cache.command("delete")
@name_option
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@engine_command
def cache_delete(control: ControlPlane, name: str, yes: bool) -> None:
    """Delete a cache rule (what it cached stays until evicted)."""
    confirmed_delete("cache rule", name, yes, control.get_rule, control.delete_rule)


@cache.command("purge")
@click.option("--repository", "-r", required=True, metavar="REPO",
              help="A cached repository, as clients pull it (e.g. ubuntu or team/api).")
@click.option("--tag", metavar="TAG", help="Purge only this tag (and its manifest unless another tag keeps it).")
@click.option("--digest", metavar="DIGEST", help="Purge only this manifest digest and every tag pointing at it.")
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@output_option
@engine_command
def cache_purge(control: ControlPlane, repository: str, tag: str | None, digest: str | None, yes: bool,
                fmt: str) -> None:
    """Remove a tag, a digest or a whole repository from the cache (e.g. after an upstream served bad content).

    The next pull fetches it from the upstream again. Blobs no other repository links are deleted.
    """

    if tag is not None and digest is not None:
        raise click.UsageError("give --tag or --digest, not both (neither purges the whole repository)")
    control.check_purge(repository, tag, digest)  # refused before the question, not after it
    what = f"{repository}:{tag}" if tag else f"{repository}@{digest}" if digest else f"repository {repository}"
    confirm(f"purge {what} from the cache", yes)
    report = run_job(control, lambda ops: ops.purge(repository, tag, digest))
    purged = report.purge
    emit({"repository": purged.repository, "tags": list(purged.tags), "unlinked": list(purged.unlinked),
          "blobsDeleted": report.blobs_deleted, "bytesFreed": report.bytes_freed,
          "sharedEntriesRemoved": report.shared_removed, "sharedError": report.shared_error},
         (("REPOSITORY", "repository"), ("TAGS", "tags"), ("BLOBS DELETED", "blobsDeleted"),
          ("BYTES FREED", "bytesFreed")), fmt)
    say(f"purged {what}: {len(purged.tags)} tag(s), {len(purged.unlinked)} manifest(s) and blob link(s), "
        f"{report.blobs_deleted} blob(s) deleted ({format_size(report.bytes_freed)}); the next pull fetches "
        f"from the upstream" + (f"; {report.shared_removed} shared tag(s) and link(s) removed from the bucket"
                                if report.shared_removed else ""))
    if report.shared_error:
        say(f"warning: {report.shared_error}")


@cache.command("sync")
@name_option
@output_option
@engine_command
def cache_sync(control: ControlPlane, name: str, fmt: str) -> None:
    """Sync the rule's tags now (fetch new or moved tags that match its --sync-tags filter)."""
    import dataclasses

    control.get_rule(name)  # a missing rule is refused before an engine starts
    outcomes = run_job(control, lambda ops: ops.sync_tags(name))
    emit([dataclasses.asdict(o) for o in outcomes],
          (("REPOSITORY", "repository"), ("RESULT", "result"), ("FETCHED", "fetched"), ("DETAIL", "detail")), fmt)
    failed = [o for o in outcomes if o.result != "ok"]
    if not outcomes:
        say(f"rule {name} has no repositories to sync yet (a wildcard rule syncs what it has cached)")
    if failed:  # why each failed is in its row (printed once)
        raise Failure(f"tag sync failed for {format_count(len(failed), 'repository', 'repositories')} of "
                      f"{format_count(len(outcomes))}: {', '.join(o.repository for o in failed)} (see the detail "
                      f"of each above)")


@cache.command("test")
@name_option
@click.option("--image", required=True, help="What a client would pull: TARGET_REPO:TAG or TARGET_REPO@DIGEST.")
@output_option
@engine_command
def cache_test(control: ControlPlane, name: str, image: str, fmt: str) -> None:
    """Show the upstream reference an image maps to, whether the credentials work, and the upstream digest.

    Nothing is cached.
    """
    import dataclasses

    result = run_job(control, lambda ops: ops.test_rule(name, image))
    record = {camel(k): v for k, v in dataclasses.asdict(result).items()}
    # the error is printed once, on stderr (JSON and YAML keep it in the document, for scripts)
    emit(record, (("RULE", "rule"), ("UPSTREAM", "upstreamReference"), ("CREDENTIALS", "credentialsValid"),
                   ("DIGEST", "digest")), fmt)
    if result.error:
        raise Failure(result.error)


@click.command()
@click.argument("image")
@click.option("--platform", default="linux/amd64", show_default=True,
              help="The image of an index to fetch (os/arch[/variant]), or 'all'.")
@engine_command
def warm(control: ControlPlane, image: str, platform: str) -> None:
    """Pull IMAGE (TARGET_REPO:TAG) into the cache without a client: on a terminal each layer's bytes, rate and
    time left as it goes, else one summary line."""
    import time

    from regcache.proxy.core.units import format_count
    from regcache.tui.progress import TerminalProgress, rate

    on_progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    chosen = None if platform == "all" else platform
    started = time.monotonic()
    result = run_job(control, lambda ops: ops.warm(image, chosen, on_progress=on_progress))
    seconds = time.monotonic() - started
    took = f" in {seconds:.1f} s ({rate(result.bytes_fetched / seconds)})" if result.bytes_fetched and seconds else ""
    say(f"{result.repository}@{result.digest}: {format_count(result.blobs, 'blob')}, fetched "
        f"{format_size(result.bytes_fetched)} from the upstream{took}, {format_size(result.bytes_cached)} "
        f"already cached")
