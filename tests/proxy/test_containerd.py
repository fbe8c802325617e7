"""containerd (`ctr`) pulling through regcache as a registry mirror, configured by `regcache client-config`.

containerd sends ``?ns=REGISTRY`` to a mirror; the proxy routes it by rule source. The fixture
runs containerd with its own root, state and socket under a temporary directory (as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from regcache.tui.cli import main


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    """A private containerd; yields its socket."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd is not installed: apt-get install -y containerd", pytrace=False)
    base = Path(f"/tmp/regcache-ctd-{os.getpid()}")  # short: unix socket paths are limited to 108 bytes
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    socket = base / "containerd.sock"
    config = base / "config.toml"
    config.write_text(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                      f'[grpc]\n  address = "{socket}"\n'
                      f'[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n')
    with open(tmp_path / "containerd.log", "w") as log:
        process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        for _ in range(100):
            if socket.exists() and subprocess.run(["ctr", "-a", str(socket), "version"],
                                                  capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("containerd did not start:\n" + (tmp_path / "containerd.log").read_text()[-2000:])
        yield socket
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        subprocess.run(["umount", "-R", str(base / "root")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def ctr_pull(socket: Path, hosts: Path, namespace: str, reference: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ctr", "-a", str(socket), "-n", namespace, "images", "pull", "--plain-http",
                           "--hosts-dir", str(hosts), "--snapshotter", "native", reference],
                          capture_output=True, text=True, timeout=120)


def test_ctr_pulls_through_the_mirror(regcache, containerd, anonymous_registry, push_image, tmp_path):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("ctd-mirror", f"{server}/*", "ctd/*")
    push_image(anonymous_registry, "library/ctdimg", "1", layers=[30_000])
    hosts = tmp_path / "certs.d"
    result = CliRunner().invoke(main, ["--home", str(regcache.home), "client-config", "containerd",
                                       "--address", regcache.host, "-d", str(hosts)])
    assert result.exit_code == 0, result.stderr

    first = ctr_pull(containerd, hosts, "first", f"{server}/library/ctdimg:1")
    assert first.returncode == 0, first.stderr
    assert {e["repository"] for e in regcache.events()} == {"ctd/library/ctdimg"}  # mirrored, routed by ns=

    anonymous_registry.stop()  # a second namespace has no content yet: only regcache can serve it
    second = ctr_pull(containerd, hosts, "second", f"{server}/library/ctdimg:1")
    assert second.returncode == 0, second.stderr
