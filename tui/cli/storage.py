"""`regcache storage ...`: where verified blobs and manifests live."""

from __future__ import annotations

import click

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.settings import FilesystemStorage, S3Storage, StorageConfig, make_s3_storage
from regcache.proxy.secrets import SecretResolver
from regcache.tui.cli.common import (
    CONTEXT_SETTINGS,
    emit,
    engine_command,
    output_option,
    say,
)
from regcache.tui.output import (
    STORAGE_FIELDS,
    storage_resource,
)

STORAGE_NOTE = "takes effect at the next start of `regcache serve` or the TUI"


@click.group(context_settings=CONTEXT_SETTINGS)
def storage() -> None:
    """Where cached blobs live: the state directory (filesystem) or an S3-compatible bucket shared by nodes (s3)."""


@storage.command("show")
@output_option
@engine_command
def storage_show(control: ControlPlane, fmt: str) -> None:
    """Show the storage backend (the bucket's secrets by id only)."""
    record = storage_resource(control.storage())
    rows = [{"setting": label, "value": record[key]} for label, key in STORAGE_FIELDS if key in record]
    emit(record, (("SETTING", "setting"), ("VALUE", "value")), fmt, rows=rows)
    say(f"note: the storage setting {STORAGE_NOTE}")


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
    from regcache.proxy.storage.objectstore import ObjectStore

    async with ObjectStore(config, secrets) as objects:
        await objects.check()


def _save_storage(control: ControlPlane, config: StorageConfig) -> None:
    control.set_storage(config)
    say(f"storage set to {config.describe()}; this {STORAGE_NOTE}")
