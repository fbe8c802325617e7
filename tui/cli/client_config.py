"""`regcache client-config`: configuration that points container runtimes at regcache."""

from __future__ import annotations

import click

from regcache.proxy.config.client_config import DEFAULT_ADDRESS
from regcache.proxy.config.control import ControlPlane
from regcache.tui.cli.common import (
    Failure,
    engine_command,
    say,
    say_document,
)


@click.command("client-config")
@click.argument("client", type=click.Choice(["containerd", "docker", "podman"]))
@click.option("--address", default=DEFAULT_ADDRESS, show_default=True,
              help="HOST:PORT where clients reach regcache (default: the proxy's default listen address).")
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

    from regcache.proxy.config import client_config as generate

    rules_ = control.list_rules()
    if client == "containerd":
        files = generate.containerd(address, rules_, control.catalogue(), insecure=not tls)
    elif client == "docker":
        files = generate.docker(address, rules_, insecure=not tls)
    else:
        files = generate.registries_conf(address, rules_, insecure=not tls)
    if output_dir is None:
        for name, text in files.items():
            say_document(f"# --- {name}\n{text}")
        return
    for name, text in files.items():
        path = Path(output_dir) / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            raise Failure(f"cannot write {path}: {exc.strerror or exc}") from None
        say(f"wrote {path}")
