"""podman pulling through regcache (as root, vfs storage under a temporary root): anonymously on loopback and
with a client token, single- and multi-arch, then again with the upstream gone."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import ok


@pytest.fixture
def roots() -> Iterator[Path]:
    """A short base directory for podman's stores (it refuses a runroot path over 50 characters)."""
    base = Path(tempfile.mkdtemp(prefix="rc-pm-", dir="/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def podman(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: apt-get install -y podman", pytrace=False)
    return subprocess.run(["podman", "--root", str(root / "root"), "--runroot", str(root / "run"),
                           "--storage-driver", "vfs", *args], capture_output=True, text=True, timeout=180)


def pulled_digest(root: Path, reference: str) -> str:
    inspected = podman(root, "image", "inspect", reference)
    assert inspected.returncode == 0, inspected.stderr
    return json.loads(inspected.stdout)[0]["Digest"]


def test_podman_pulls_through_regcache_and_offline(regcache, anonymous_registry, push_image, roots):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-rule", f"{server}/team/*", "team/*")
    single = push_image(anonymous_registry, "team/app", "1", layers=[200_000, 3_000])
    multi = push_image(anonymous_registry, "team/multi", "2", layers=[50_000], multiarch=True)
    for image, reference in ((single, f"{regcache.host}/team/app:1"), (multi, f"{regcache.host}/team/multi:2")):
        answer = podman(roots / "first", "pull", "--tls-verify=false", reference)
        assert answer.returncode == 0, answer.stderr
        assert pulled_digest(roots / "first", reference) == image.digest
    anonymous_registry.stop()
    reference = f"{regcache.host}/team/app:1"
    again = podman(roots / "offline", "pull", "--tls-verify=false", reference)
    assert again.returncode == 0, again.stderr
    assert pulled_digest(roots / "offline", reference) == single.digest


def test_podman_with_a_client_token(regcache, anonymous_registry, push_image, roots):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-rule", f"{server}/team/*", "team/*")
    image = push_image(anonymous_registry, "team/app", "1", layers=[20_000])
    ok("--home", str(regcache.home), "token", "create", "-n", "ci-puller", "--repository", "team/*",
       "--password-stdin", input="podman-token-password-0123456789\n")
    reference = f"{regcache.host}/team/app:1"
    refused = podman(roots, "pull", "--tls-verify=false", reference)
    assert refused.returncode != 0 and "authentication required" in refused.stderr
    answer = podman(roots, "pull", "--tls-verify=false",
                    "--creds", "ci-puller:podman-token-password-0123456789", reference)
    assert answer.returncode == 0, answer.stderr
    assert pulled_digest(roots, reference) == image.digest
