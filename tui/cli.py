"""The ``regcache`` command: ``az acr cache`` / ``az acr credential-set`` for a local cache.

Only what a command needs is imported: listing rules loads neither Textual nor uvicorn.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import wraps
from typing import Any

import click

from proxy.control import ControlPlane
from proxy.errors import RegcacheError, unwrap_error
from proxy.models import ANONYMOUS, AuthPolicy
from proxy.objectstore import DEFAULT_STALE_UPLOAD_AGE
from proxy.oci import RegistryError
from proxy.secrets import SecretResolver
from proxy.storage import FilesystemStorage, S3Storage, StorageConfig, make_s3_storage
from proxy.units import format_duration

from .output import (
    CREDENTIAL_SET_COLUMNS,
    FORMATS,
    RULE_COLUMNS,
    STORAGE_FIELDS,
    TOKEN_COLUMNS,
    UPSTREAM_COLUMNS,
    Column,
    credential_set_resource,
    render,
    rule_resource,
    storage_resource,
    token_resource,
    upstream_resource,
)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

output_option = click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table",
                             show_default=True, help="Output format.")
name_option = click.option("-n", "--name", required=True, help="Name (5-50 letters, digits, hyphens).")


class Failure(click.ClickException):
    """A refused command: one line on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _control(ctx: click.Context) -> ControlPlane:
    obj = ctx.find_root().obj
    if obj.get("control") is None:
        obj["control"] = ControlPlane.open(obj.get("home"))
        ctx.call_on_close(obj["control"].close)
    return obj["control"]


def engine_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give the command the control plane and turn engine errors into one-line failures."""

    @click.pass_context
    @wraps(fn)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(_control(ctx), *args, **kwargs)
        except (RegcacheError, RegistryError, BaseExceptionGroup) as exc:
            # RegistryError: what the proxy would have answered a client (warm, cache test);
            # groups: errors raised inside the task group of an async command
            inner = unwrap_error(exc, (RegcacheError, RegistryError))
            if isinstance(inner, (RegcacheError, RegistryError)):
                raise Failure(str(inner)) from None
            raise

    return wrapper


def _emit(data: Any, columns: Sequence[Column], fmt: str) -> None:
    text = render(data, columns, fmt)
    if text:
        click.echo(text)


def _confirmed_delete(what: str, name: str, yes: bool, get: Callable[[str], Any],
                      delete: Callable[[str], Any]) -> None:
    """Delete a named object: it must exist, then the operator confirms (or passed -y)."""
    get(name)
    _confirm(f"delete {what} {name!r}", yes)
    delete(name)
    click.echo(f"deleted {what} {name}", err=True)


def _interactive() -> bool:
    """Whether a person can answer a prompt (stdin is a terminal)."""
    return sys.stdin.isatty()


def _confirm(prompt: str, yes: bool) -> None:
    if yes:
        return
    if not _interactive():
        raise Failure(f"{prompt} needs confirmation: pass -y/--yes to do it without a prompt")
    if not click.confirm(f"{prompt}?", default=False):
        raise Failure("cancelled; nothing was changed")


@click.group(context_settings=CONTEXT_SETTINGS, invoke_without_command=True)
@click.option("--home", type=click.Path(file_okay=False), envvar="REGCACHE_HOME",
              help="State directory (default: $REGCACHE_HOME, else ~/.local/share/regcache).")
@click.version_option(package_name="regcache")
@click.pass_context
def main(ctx: click.Context, home: str | None) -> None:
    """regcache: a terminal-first pull-through cache for container registries.

    With no command, opens the TUI with the embedded proxy.
    """
    ctx.ensure_object(dict)
    ctx.obj["home"] = home
    if ctx.invoked_subcommand is None:
        ctx.invoke(tui_command)


allow_anonymous_option = click.option(
    "--allow-anonymous", is_flag=True, envvar="REGCACHE_ALLOW_ANONYMOUS",
    help="Allow pulls without a client token on a non-loopback address (otherwise such an address needs "
         "a token: `regcache token create`).")


@main.command("tui")
@click.option("--listen", default="127.0.0.1:5000", show_default=True, help="Proxy address, HOST:PORT.")
@allow_anonymous_option
@click.pass_context
def tui_command(ctx: click.Context, listen: str = "127.0.0.1:5000", allow_anonymous: bool = False) -> None:
    """Open the TUI with the embedded proxy."""
    from proxy.server import ListenAddress, check_exposure
    from proxy.store import resolve_home

    from .app import run_app  # Textual loads only here: the other commands stay fast

    home = ctx.find_root().obj.get("home")
    try:
        check_exposure(resolve_home(home), ListenAddress.parse(listen), allow_anonymous)  # before the screen opens
        run_app(home=home, listen=listen, allow_anonymous=allow_anonymous)
    except RegcacheError as exc:
        raise Failure(str(exc)) from None


@main.command()
@click.option("--listen", default="127.0.0.1:5000", show_default=True, help="Address to serve on, HOST:PORT.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--metrics-listen", metavar="HOST:PORT",
              help="Serve Prometheus /metrics on this address instead of beside the registry API.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@allow_anonymous_option
@click.pass_context
def serve(ctx: click.Context, listen: str, tls_cert: str | None, tls_key: str | None, metrics_listen: str | None,
          log_level: str, allow_anonymous: bool = False) -> None:
    """Run the registry proxy in the foreground (stops cleanly on SIGTERM or Ctrl-C)."""
    import logging
    import signal

    import anyio

    from proxy.server import ProxyServer
    from proxy.store import resolve_home

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_level != "debug":  # httpx logs every upstream request at INFO: the event log has them
        logging.getLogger("httpx").setLevel(logging.WARNING)
    home = resolve_home(ctx.find_root().obj.get("home"))

    async def run() -> None:
        server = ProxyServer(home, listen, tls_cert=tls_cert, tls_key=tls_key, metrics_listen=metrics_listen,
                             allow_anonymous=allow_anonymous)
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)  # a taken port raises here
            click.echo(f"regcache: serving {server.url} (state: {home})", err=True)
            if server.metrics_address is not None:
                click.echo(f"regcache: metrics on http://{server.metrics_address}/metrics", err=True)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logging.getLogger("regcache").info("%s: finishing in-flight requests",
                                                       signal.Signals(signum).name)
                    server.stop()
                    break

    try:
        anyio.run(run)
    except BaseException as exc:
        inner = unwrap_error(exc)
        if isinstance(inner, RegcacheError):
            raise Failure(str(inner)) from None
        raise


def _rule_settings(freshness: str | None, retention: str | None, serve_stale: bool | None,
                   serve_stale_if_deleted: bool | None, sync_tags: str | None = None,
                   sync_interval: str | None = None) -> dict[str, Any]:
    """The settings given on the command line, parsed ("none" clears retention and tag sync)."""
    from proxy.units import parse_duration

    settings: dict[str, Any] = {}
    if sync_tags is not None:
        settings["sync_tags"] = None if sync_tags.lower() in ("none", "off") else sync_tags
    if sync_interval is not None:
        settings["sync_interval"] = parse_duration(sync_interval, "sync_interval")
    if freshness is not None:
        settings["freshness"] = parse_duration(freshness, field="freshness")
    if retention is not None:
        settings["retention"] = None if retention.lower() in ("none", "off") else parse_duration(retention,
                                                                                                  "retention")
    if serve_stale is not None:
        settings["serve_stale_on_error"] = serve_stale
    if serve_stale_if_deleted is not None:
        settings["serve_stale_if_deleted"] = serve_stale_if_deleted
    return settings


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

@main.group(context_settings=CONTEXT_SETTINGS)
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
    _emit(rule_resource(control.create_rule(name, source, target, cred_set, **settings)), RULE_COLUMNS, fmt)


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
    _emit(rule_resource(control.update_rule(name, cred_set, remove_cred_set, **settings)), RULE_COLUMNS, fmt)


@cache.command("show")
@name_option
@output_option
@engine_command
def cache_show(control: ControlPlane, name: str, fmt: str) -> None:
    """Show a cache rule."""
    _emit(rule_resource(control.get_rule(name)), RULE_COLUMNS, fmt)


@cache.command("list")
@output_option
@engine_command
def cache_list(control: ControlPlane, fmt: str) -> None:
    """List cache rules."""
    _emit([rule_resource(r) for r in control.list_rules()], RULE_COLUMNS, fmt)


@cache.command("delete")
@name_option
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@engine_command
def cache_delete(control: ControlPlane, name: str, yes: bool) -> None:
    """Delete a cache rule (what it cached stays until evicted)."""
    _confirmed_delete("cache rule", name, yes, control.get_rule, control.delete_rule)


@cache.command("sync")
@name_option
@output_option
@engine_command
def cache_sync(control: ControlPlane, name: str, fmt: str) -> None:
    """Sync the rule's tags now (fetch new or moved tags that match its --sync-tags filter)."""
    import dataclasses

    import anyio

    from proxy.prefetch import pull_through
    from proxy.tagsync import sync_rule

    rule = control.get_rule(name)

    async def run() -> list:
        async with pull_through(control.store.home, control.secrets) as cache:
            return await sync_rule(cache, rule)

    outcomes = anyio.run(run)
    _emit([dataclasses.asdict(o) for o in outcomes],
          (("REPOSITORY", "repository"), ("RESULT", "result"), ("FETCHED", "fetched"), ("DETAIL", "detail")), fmt)
    failed = [o for o in outcomes if o.result != "ok"]
    if not outcomes:
        click.echo(f"rule {name} has no repositories to sync yet (a wildcard rule syncs what it has cached)",
                   err=True)
    if failed:
        raise Failure(f"tag sync failed for {', '.join(o.repository for o in failed)}: {failed[0].detail}")


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

    import anyio

    from proxy.prefetch import probe_rule

    result = anyio.run(lambda: probe_rule(control.store.home, name, image, control.secrets))
    record = {_camel(k): v for k, v in dataclasses.asdict(result).items()}
    _emit(record, (("RULE", "rule"), ("UPSTREAM", "upstreamReference"), ("CREDENTIALS", "credentialsValid"),
                   ("DIGEST", "digest"), ("ERROR", "error")), fmt)
    if result.error:
        raise Failure(result.error)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@main.command()
@click.argument("image")
@click.option("--platform", default="linux/amd64", show_default=True,
              help="The image of an index to fetch (os/arch[/variant]), or 'all'.")
@engine_command
def warm(control: ControlPlane, image: str, platform: str) -> None:
    """Pull IMAGE (TARGET_REPO:TAG) into the cache without a client, with a progress bar."""
    import anyio

    from proxy.prefetch import warm as warm_image
    from proxy.units import format_size

    bar_holder: dict[str, Any] = {}

    def on_total(total: int) -> None:
        bar_holder["bar"] = click.progressbar(length=total, label=f"warming {image}", file=sys.stderr,
                                              show_pos=False, show_percent=True, show_eta=True)
        bar_holder["bar"].__enter__()

    def on_progress(n: int) -> None:
        if "bar" in bar_holder:
            bar_holder["bar"].update(n)

    try:
        result = anyio.run(lambda: warm_image(control.store.home, image, None if platform == "all" else platform,
                                              on_total=on_total, on_progress=on_progress, secrets=control.secrets))
    finally:
        if "bar" in bar_holder:
            bar_holder["bar"].__exit__(None, None, None)
    click.echo(f"{result.repository}@{result.digest}: {result.blobs} blob(s), fetched "
               f"{format_size(result.bytes_fetched)} from the upstream, {format_size(result.bytes_cached)} "
               f"already cached", err=True)


# -- credential sets ---------------------------------------------------------------------------

@main.group("credential-set", context_settings=CONTEXT_SETTINGS)
def credential_set() -> None:
    """Manage credential sets for upstream logins (az acr credential-set)."""


@credential_set.command("create")
@name_option
@click.option("-l", "--login-server", required=True, help="Login server of the source registry, e.g. docker.io.")
@click.option("-u", "--username-id", required=True, help="Secret id of the username: keyring://SERVICE/NAME or env://VAR.")
@click.option("-p", "--password-id", required=True, help="Secret id of the password or token.")
@output_option
@engine_command
def credential_set_create(control: ControlPlane, name: str, login_server: str, username_id: str,
                          password_id: str, fmt: str) -> None:
    """Create a credential set (secret ids only; store values with `regcache secret set`)."""
    cs = control.create_credential_set(name, login_server, username_id, password_id)
    _emit(credential_set_resource(cs), CREDENTIAL_SET_COLUMNS, fmt)


@credential_set.command("update")
@name_option
@click.option("-u", "--username-id", help="New secret id of the username.")
@click.option("-p", "--password-id", help="New secret id of the password or token.")
@output_option
@engine_command
def credential_set_update(control: ControlPlane, name: str, username_id: str | None, password_id: str | None,
                          fmt: str) -> None:
    """Change the secret ids of a credential set."""
    cs = control.update_credential_set(name, username_id, password_id)
    _emit(credential_set_resource(cs), CREDENTIAL_SET_COLUMNS, fmt)


@credential_set.command("show")
@name_option
@output_option
@engine_command
def credential_set_show(control: ControlPlane, name: str, fmt: str) -> None:
    """Show a credential set and its health (re-checks that its secrets can be read)."""
    cs = control.refresh_credential_set(name)
    _emit(credential_set_resource(cs, control.rate_limit(cs.login_server, cs.name)), CREDENTIAL_SET_COLUMNS, fmt)


@credential_set.command("list")
@output_option
@engine_command
def credential_set_list(control: ControlPlane, fmt: str) -> None:
    """List credential sets."""
    _emit([credential_set_resource(cs, control.rate_limit(cs.login_server, cs.name))
           for cs in control.list_credential_sets()], CREDENTIAL_SET_COLUMNS, fmt)


@credential_set.command("delete")
@name_option
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@engine_command
def credential_set_delete(control: ControlPlane, name: str, yes: bool) -> None:
    """Delete a credential set (refused while a cache rule uses it; the secrets stay in the keyring)."""
    _confirmed_delete("credential set", name, yes, control.get_credential_set, control.delete_credential_set)


# -- client configuration ----------------------------------------------------------------------

@main.command("client-config")
@click.argument("client", type=click.Choice(["containerd", "docker", "podman"]))
@click.option("--address", default="localhost:5000", show_default=True,
              help="HOST:PORT where clients reach regcache.")
@click.option("--tls", is_flag=True, help="regcache serves TLS (--tls-cert); default: plain http, marked insecure.")
@click.option("-d", "--output-dir", type=click.Path(file_okay=False),
              help="Write the files here (e.g. /etc/containerd/certs.d); default: print them.")
@engine_command
def client_config(control: ControlPlane, client: str, address: str, tls: bool, output_dir: str | None) -> None:
    """Configuration that points CLIENT at regcache, from the cache rules.

    containerd: hosts.toml per upstream registry (set config_path to the directory);
    docker: daemon.json registry-mirrors (needs the rule * => docker.io/*);
    podman: registries.conf mirrors (also for skopeo, buildah, CRI-O).
    """
    from pathlib import Path

    from proxy import client_config as generate

    rules_ = control.list_rules()
    if client == "containerd":
        files = generate.containerd(address, rules_, control.catalogue(), insecure=not tls)
    elif client == "docker":
        files = generate.docker(address, rules_, insecure=not tls)
    else:
        files = generate.registries_conf(address, rules_, insecure=not tls)
    if output_dir is None:
        for name, text in files.items():
            click.echo(f"# --- {name}\n{text}", nl=False)
        return
    for name, text in files.items():
        path = Path(output_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        click.echo(f"wrote {path}", err=True)


# -- declarative rules ---------------------------------------------------------------------------

@main.group(context_settings=CONTEXT_SETTINGS)
def rules() -> None:
    """Share one reviewed rules file across caches: export, then apply (dry run by default)."""


@rules.command("export")
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False, writable=True),
              help="Write to FILE instead of standard output.")
@engine_command
def rules_export(control: ControlPlane, path: str | None) -> None:
    """Export upstreams, credential sets (secret ids only) and cache rules as YAML."""
    from proxy.declarative import export_document

    text = export_document(control)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"wrote {path}", err=True)
    else:
        click.echo(text, nl=False)


@rules.command("apply")
@click.option("-f", "--file", "path", required=True, type=click.File("r", encoding="utf-8"),
              help="The rules file (YAML, as `rules export` writes it); - for standard input.")
@click.option("--yes", is_flag=True, help="Apply the changes (without it: show them, change nothing).")
@engine_command
def rules_apply(control: ControlPlane, path: Any, yes: bool) -> None:
    """Make this cache's configuration equal to FILE: every change in one transaction, or none."""
    from proxy.declarative import apply_document, plan_document

    text = path.read()
    changes = apply_document(control, text) if yes else plan_document(control, text)
    for change in changes:
        click.echo(str(change))
    if not changes:
        click.echo("no changes: the configuration already matches the file", err=True)
    elif not yes:
        click.echo(f"{len(changes)} change(s) planned; nothing was changed. Run again with --yes to apply.", err=True)
    else:
        click.echo(f"applied {len(changes)} change(s)", err=True)


# -- settings ----------------------------------------------------------------------------------

@main.group(context_settings=CONTEXT_SETTINGS)
def settings() -> None:
    """Settings of the whole cache (max-size)."""


@settings.command("show")
@output_option
@engine_command
def settings_show(control: ControlPlane, fmt: str) -> None:
    """Show every setting."""
    from proxy.control import SETTINGS

    rows = [{"key": key, "value": value, "description": SETTINGS[key][2]} for key, value in control.settings().items()]
    _emit(rows if fmt != "json" else {r["key"]: r["value"] or None for r in rows},
          (("KEY", "key"), ("VALUE", "value"), ("DESCRIPTION", "description")), fmt)


@settings.command("set")
@click.argument("key")
@click.argument("value")
@engine_command
def settings_set(control: ControlPlane, key: str, value: str) -> None:
    """Set KEY to VALUE, e.g. `regcache settings set max-size 50GiB`."""
    click.echo(f"{key} = {control.set_setting(key, value)}", err=True)


@settings.command("unset")
@click.argument("key")
@engine_command
def settings_unset(control: ControlPlane, key: str) -> None:
    """Remove a setting (max-size: no limit)."""
    control.unset_setting(key)
    click.echo(f"{key} unset", err=True)


# -- storage backend -----------------------------------------------------------------------------

STORAGE_NOTE = "takes effect at the next start of `regcache serve` or the TUI"


@main.group(context_settings=CONTEXT_SETTINGS)
def storage() -> None:
    """Where cached blobs live: the state directory (filesystem) or an S3-compatible bucket shared by nodes (s3)."""


@storage.command("show")
@output_option
@engine_command
def storage_show(control: ControlPlane, fmt: str) -> None:
    """Show the storage backend (the bucket's secrets by id only)."""
    record = storage_resource(control.storage())
    rows = [{"setting": label, "value": record[key]} for label, key in STORAGE_FIELDS if key in record]
    _emit(record if fmt == "json" else rows, (("SETTING", "setting"), ("VALUE", "value")), fmt)
    click.echo(f"note: the storage setting {STORAGE_NOTE}", err=True)


@storage.group("set", context_settings=CONTEXT_SETTINGS)
def storage_set() -> None:
    """Choose the storage backend: filesystem (the default) or s3."""


@storage_set.command("filesystem")
@engine_command
def storage_set_filesystem(control: ControlPlane) -> None:
    """Keep blobs under the state directory."""
    _save_storage(control, FilesystemStorage())


@storage_set.command("s3")
@click.option("--endpoint", required=True, metavar="URL", help="The store's URL, e.g. https://s3.example.com.")
@click.option("--bucket", required=True, metavar="NAME", help="The bucket (it must exist).")
@click.option("--access-key-id", required=True, metavar="SECRET_ID",
              help="Secret id of the access key id: keyring://SERVICE/NAME or env://VAR.")
@click.option("--secret-access-key", required=True, metavar="SECRET_ID", help="Secret id of the secret access key.")
@click.option("--region", metavar="REGION", help="Signing region (default us-east-1).")
@click.option("--path-style/--virtual-hosted", default=True, show_default=True,
              help="Address the bucket in the path (most stores other than AWS) or in the host name.")
@click.option("--prefix", metavar="PREFIX", help="Key prefix inside the bucket (default regcache).")
@click.option("--no-check", is_flag=True, help="Save without first checking that the bucket can be listed.")
@engine_command
def storage_set_s3(control: ControlPlane, endpoint: str, bucket: str, access_key_id: str, secret_access_key: str,
                   region: str | None, path_style: bool, prefix: str | None, no_check: bool) -> None:
    """Keep blobs in a bucket of an S3-compatible store; checks the bucket with the credentials first."""
    import anyio

    config = make_s3_storage(endpoint, bucket, access_key_id, secret_access_key, region=region, path_style=path_style,
                         prefix=prefix)
    if not no_check:
        anyio.run(_check_bucket, config, control.secrets)
    _save_storage(control, config)


async def _check_bucket(config: S3Storage, secrets: SecretResolver) -> None:
    """Raise StorageError (or SecretError) unless the bucket can be listed with the configured secrets."""
    from proxy.objectstore import ObjectStore

    async with ObjectStore(config, secrets) as objects:
        await objects.check()


def _save_storage(control: ControlPlane, config: StorageConfig) -> None:
    control.set_storage(config)
    click.echo(f"storage set to {config.describe()}; this {STORAGE_NOTE}", err=True)


# -- eviction ----------------------------------------------------------------------------------

@main.command()
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
    from proxy.eviction import collect_garbage
    from proxy.units import format_size, parse_duration

    report = collect_garbage(control.store, control.secrets, parse_duration(min_idle, "min-idle"),
                             timedelta(seconds=parse_duration(stale_uploads_after, "stale-uploads-after")), dry_run)
    plan, freed = report.plan, report.bytes_freed
    rows = [{"digest": c.digest, "size": c.size, "sizeText": format_size(c.size), "reason": c.reason,
             "lastPull": c.last_access.isoformat() if c.last_access else None} for c in plan.candidates]
    uploads = None if report.stale_uploads is None else [
        {"key": key, "uploadId": upload_id, "reason": why, "initiated": initiated.isoformat()}
        for key, upload_id, initiated, why in report.stale_uploads]
    if fmt == "json":
        result = {"dryRun": dry_run, "evicted": rows, "bytesFreed": freed, "cacheBytes": plan.cache_bytes,
                  "maxSize": plan.max_size, "expiredRepositories": list(plan.expired_repositories)}
        if uploads is not None:
            result["abortedUploads"] = uploads
        click.echo(json.dumps(result, indent=2))
        return
    _emit(rows, (("DIGEST", "digest"), ("SIZE", "sizeText"), ("REASON", "reason")), fmt)
    verb = "would free" if dry_run else "freed"
    limit = f" (max-size {format_size(plan.max_size)})" if plan.max_size is not None else ""
    click.echo(f"{verb} {format_size(freed)} in {len(plan.candidates)} blob(s); cache "
               f"{format_size(plan.cache_bytes)} -> {format_size(plan.cache_bytes - freed)}{limit}", err=True)
    if uploads is not None:
        if uploads:
            if fmt == "table":
                click.echo()  # apart from the evicted blobs' table
            _emit(uploads, (("UPLOAD KEY", "key"), ("REASON", "reason")), fmt)
        verb = "would abort" if dry_run else "aborted"
        click.echo(f"{verb} {len(uploads)} stale multipart upload(s) in {report.storage}", err=True)


# -- secrets -----------------------------------------------------------------------------------

@main.group(context_settings=CONTEXT_SETTINGS)
def secret() -> None:
    """Store secret values in the OS keyring."""


def _read_secret_value() -> str:
    if _interactive():
        return click.prompt("Secret value", hide_input=True, confirmation_prompt=True, err=True)
    value = sys.stdin.read()
    # Only the line break that `echo` or a here-string adds is dropped.
    return value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value


@secret.command("set")
@click.argument("secret_id")
@engine_command
def secret_set(control: ControlPlane, secret_id: str) -> None:
    """Store a value for SECRET_ID (keyring://SERVICE/NAME), prompted without echo or read from stdin."""
    control.set_secret(secret_id, _read_secret_value())
    click.echo(f"stored {secret_id}", err=True)


# -- upstreams ---------------------------------------------------------------------------------

@main.group(context_settings=CONTEXT_SETTINGS)
def upstream() -> None:
    """Manage upstream registries: custom ones and URL overrides of built-ins."""


@upstream.command("add")
@click.option("--login-server", required=True, help="HOST[:PORT] that cache-rule sources start with.")
@click.option("--url", required=True, help="API base URL (https:// unless http:// is written out).")
@click.option("--auth", type=click.Choice([p.value for p in AuthPolicy]), default=None,
              help="Pulls the upstream allows (custom upstreams; default both).")
@output_option
@engine_command
def upstream_add(control: ControlPlane, login_server: str, url: str, auth: str | None, fmt: str) -> None:
    """Add a custom upstream, or override a built-in upstream's URL (mirrors, tests)."""
    _emit(upstream_resource(control.add_upstream(login_server, url, auth)), UPSTREAM_COLUMNS, fmt)


@upstream.command("list")
@output_option
@engine_command
def upstream_list(control: ControlPlane, fmt: str) -> None:
    """List built-in and custom upstreams."""
    _emit([upstream_resource(u, control.rate_limit(u.login_server, ANONYMOUS)) for u in control.list_upstreams()],
          UPSTREAM_COLUMNS, fmt)


@upstream.command("remove")
@click.option("--login-server", required=True, help="The upstream to remove (a built-in: its URL override).")
@engine_command
def upstream_remove(control: ControlPlane, login_server: str) -> None:
    """Remove a custom upstream, or restore a built-in upstream's default URL."""
    removed = control.remove_upstream(login_server)
    what = "URL override of" if removed.builtin else "upstream"
    click.echo(f"removed {what} {removed.login_server}", err=True)


# -- client tokens -------------------------------------------------------------------------------

@main.group(context_settings=CONTEXT_SETTINGS)
def token() -> None:
    """Manage client tokens: repository-scoped logins for pulling through regcache (az acr token).

    Once a token exists, every client must log in with one (HTTP Basic: NAME and PASSWORD).
    """


def _read_token_password(name: str) -> str:
    """The password of a new token: prompted twice without echo on a terminal, else all of stdin."""
    if _interactive():
        return click.prompt(f"Password for token {name}", hide_input=True, confirmation_prompt=True, err=True)
    try:
        value = sys.stdin.read()
    except UnicodeDecodeError:
        raise Failure("the password on stdin is not valid UTF-8") from None
    # Only the line break that `echo`, `pass show` or a here-string adds is dropped.
    return value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value


@token.command("create")
@name_option
@click.option("--repository", "repositories", multiple=True, required=True, metavar="PATTERN",
              help="A repository the token may pull: ubuntu, team/* (everything under team/) or *. Repeatable.")
@click.option("--expiry", metavar="DATE|DURATION",
              help="When the token stops working: an ISO date or datetime in UTC (2026-12-31, 2026-12-31T18:00Z) "
                   "or a duration from now (30d). Default: never.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from stdin (prompted without echo on a terminal) instead of generating one: "
                   "the same token on every node behind a load balancer. At least 16 characters.")
@output_option
@engine_command
def token_create(control: ControlPlane, name: str, repositories: tuple[str, ...], expiry: str | None,
                 password_stdin: bool, fmt: str) -> None:
    """Create a client token and print its generated password, once (only a salted hash is stored).

    With --password-stdin the password is read from stdin and never printed.
    """
    given = _read_token_password(name) if password_stdin else None
    created, password = control.create_token(name, repositories, expiry, password=given)
    record = token_resource(created)
    if fmt == "json":  # as `az acr token create` shows it
        entry = {"name": "password1", "value": password, "creationTime": record["creationDate"],
                 "expiry": record["expiry"]}
        if given is not None:
            del entry["value"]  # the operator has it already; it is not echoed
        record["credentials"] = {"username": created.name, "passwords": [entry]}
        _emit(record, TOKEN_COLUMNS, fmt)
    elif given is not None:
        _emit(record, (("NAME", "name"), ("REPOSITORIES", "repositories"), ("EXPIRY", "expiry")), fmt)
    else:
        record["password"] = password
        _emit(record, (("NAME", "name"), ("REPOSITORIES", "repositories"), ("EXPIRY", "expiry"),
                       ("PASSWORD", "password")), fmt)
    login = (f"Clients log in as {created.name}, e.g. `skopeo copy --src-creds {created.name}:PASSWORD ...` or "
             f"`docker login HOST:PORT -u {created.name}`.")
    if given is not None:
        source = "the prompt" if _interactive() else "stdin"
        click.echo(f"token {created.name} created with the password from {source}. {login}", err=True)
    else:
        click.echo(f"Save the password now: it will not be shown again (regcache keeps only a salted hash). "
                   f"{login}", err=True)


@token.command("list")
@output_option
@engine_command
def token_list(control: ControlPlane, fmt: str) -> None:
    """List client tokens: repositories, expiry, creation and last use (never a password)."""
    _emit([token_resource(t) for t in control.list_tokens()], TOKEN_COLUMNS, fmt)


@token.command("delete")
@name_option
@click.option("-y", "--yes", is_flag=True, help="Do not prompt for confirmation.")
@engine_command
def token_delete(control: ControlPlane, name: str, yes: bool) -> None:
    """Delete a client token; clients using it are refused from their next request."""
    _confirmed_delete("token", name, yes, control.get_token, control.delete_token)
    if not control.list_tokens():
        click.echo("no client tokens remain: a proxy on a loopback address (or started with --allow-anonymous) "
                   "serves anonymous pulls again", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
