"""Faults of the machine under the proxy: `kill -9` in the middle of a download, a full blobs disk, a disk flush
that is slow or fails once the bytes verified (their clients have them whole either way).

The first two pull through a throttling front, so the download is still running when the test strikes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from regcache.proxy.config.control import ControlPlane
from tests.helpers.commands import ServeProcess
from tests.registries.images import PushedImage
from tests.registries.skopeo import SkopeoError, assert_pulled

from .conftest import Regcache, start_regcache
from .fronts import PASS, THROTTLE, FaultyFront

MiB = 1024 * 1024
T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _blob_path(home: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return home / "blobs" / algorithm / encoded[:2] / encoded


def _temp_file_of(tmp_dir: Path, digest: str, at_least: int) -> Path | None:
    """The temporary file of ``digest``'s download once it holds ``at_least`` bytes."""
    for path in tmp_dir.iterdir() if tmp_dir.is_dir() else ():
        try:
            if path.name.endswith(digest.replace(":", "-")) and path.stat().st_size >= at_least:
                return path
        except FileNotFoundError:  # renamed into place or deleted meanwhile
            continue
    return None


def _integrity(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def _stored_rows(db: Path, digest: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT digest, size, path FROM blobs WHERE digest = ?", [digest]).fetchall()
    finally:
        conn.close()


def test_kill_9_mid_download_stores_nothing_unverified(home, keyring_env, anonymous_registry, push_image, skopeo,
                                                      tmp_path):
    image = push_image(anonymous_registry, "acme/crashy", "1", layers=[24_000_000])
    layer = image.layers[0]
    front = FaultyFront(anonymous_registry.url, THROTTLE).start()
    front.throttle_chunk = 128 * 1024  # ~6 MB/s: about 4 s for the layer, plenty of time to strike mid-way
    processes: list[subprocess.Popen] = []
    try:
        control = ControlPlane.open(home)
        control.add_upstream(front.host, front.url, "anonymous")
        control.create_rule("crash-app", f"{front.host}/acme/crashy", "crashy")
        control.close()

        first = ServeProcess(home, "--listen", "127.0.0.1:0", env=keyring_env)
        processes.append(first.proc)
        puller = subprocess.Popen([skopeo.binary, "--insecure-policy", "copy", "--src-tls-verify=false",
                                   "--src-no-creds", f"docker://{first.host}/crashy:1",
                                   f"oci:{tmp_path / 'interrupted'}:1"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(puller)
        partial = _wait_for("the layer's download to be under way",
                            lambda: _temp_file_of(home / "blobs" / "tmp", layer.digest, 4 * MiB))
        first.proc.kill()  # SIGKILL: no cleanup of any kind
        first.proc.wait()  # reaped, as init would: its pid is no longer alive
        assert partial.name.startswith(f"{first.proc.pid}-")
        assert partial.exists() and partial.stat().st_size < layer.size, "the kill came after the download"
        assert not _blob_path(home, layer.digest).exists()
        assert _integrity(home / "state.db") == ["ok"]
        puller.kill()
        puller.wait()

        front.mode = PASS
        second = ServeProcess(home, "--listen", "127.0.0.1:0", env=keyring_env)
        processes.append(second.proc)
        assert not partial.exists(), "the dead process's temporary file is removed at start"
        assert list((home / "blobs" / "tmp").iterdir()) == []
        assert not _blob_path(home, layer.digest).exists()
        assert _stored_rows(home / "state.db", layer.digest) == []
        with httpx.Client(base_url=second.url, timeout=30) as http:  # nothing unverified is served
            assert http.get(f"/v2/crashy/blobs/{layer.digest}").content == layer.data

        assert_pulled(skopeo.copy_to_oci(f"{second.host}/crashy:1", tmp_path / "pulled", "1"), "1", image)
        kept = _wait_for("the blob stored", lambda: _blob_path(home, layer.digest) if _stored_rows(
            home / "state.db", layer.digest) else None)  # clients have it once verified; it is stored moments later
        stored = kept.read_bytes()
        assert "sha256:" + hashlib.sha256(stored).hexdigest() == layer.digest
        assert _integrity(home / "state.db") == ["ok"]
        code, output = second.terminate()
        assert code == 0, output
        assert "Traceback" not in output
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        front.stop()


# -- a full disk ----------------------------------------------------------------------------------

DISK = "20m"
#: few inodes, so that the test can also use them all up (creating a temporary file then fails)
INODES = 200


@pytest.fixture
def small_blobs_disk(home: Path) -> Iterator[Path]:
    """``<home>/blobs`` on a 20 MiB tmpfs (needs root); failing, not skipping, where it cannot be mounted."""
    blobs = home / "blobs"
    blobs.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},nr_inodes={INODES},mode=0700", "tmpfs",
                              str(blobs)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"the full-disk test mounts a {DISK} tmpfs on {blobs} and could not "
                    f"(it needs root or CAP_SYS_ADMIN): {(mounted.stderr or mounted.stdout).strip()}", pytrace=False)
    try:
        yield blobs
    finally:
        if subprocess.run(["umount", str(blobs)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(blobs)], capture_output=True)


class CacheHits(threading.Thread):
    """Pulls a cached image's manifest and layer by digest, over and over, until stopped."""

    def __init__(self, rc: Regcache, repository: str, image: PushedImage) -> None:
        super().__init__(daemon=True)
        self.rc, self.repository, self.image = rc, repository, image
        self.served = 0
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        layer = self.image.layers[0]
        with self.rc.http() as http:
            while not self._halt.is_set():
                for path, expected in ((f"manifests/{self.image.digest}", self.image.manifest),
                                       (f"blobs/{layer.digest}", layer.data)):
                    try:
                        response = http.get(f"/v2/{self.repository}/{path}")
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{path}: {exc!r}")
                        continue
                    if response.status_code != 200 or response.content != expected:
                        self.failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                    else:
                        self.served += 1

    def __enter__(self) -> CacheHits:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._halt.set()
        self.join(30)


def _use_up_inodes(directory: Path) -> int:
    directory.mkdir()
    for n in range(INODES * 2):
        try:
            (directory / str(n)).touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return n
    raise AssertionError(f"{directory} still takes files after {INODES * 2}: nr_inodes did not apply")


def test_full_disk_fails_the_download_cleanly_and_keeps_serving_hits(home, keyring_env, small_blobs_disk,
                                                                    anonymous_registry, push_image, skopeo,
                                                                    tmp_path):
    small = push_image(anonymous_registry, "acme/small", "1", layers=[200_000])
    big = push_image(anonymous_registry, "acme/big", "1", layers=[12_000_000])
    layer = big.layers[0]
    front = FaultyFront(anonymous_registry.url, THROTTLE).start()
    rc = start_regcache(home)
    try:
        rc.control.add_upstream(front.host, front.url, "anonymous")
        rc.control.create_rule("full-disk", f"{front.host}/acme/*", "acme/*")
        blobs = rc.server.app.state.registry.cache.blobs
        assert_pulled(skopeo.copy_to_oci(f"{rc.host}/acme/small:1", tmp_path / "small", "1"), "1", small)

        filler = small_blobs_disk / "filler"
        filler.write_bytes(bytes(12 * MiB))
        assert shutil.disk_usage(small_blobs_disk).free < layer.size

        with CacheHits(rc, "acme/small", small) as hits:
            with pytest.raises(SkopeoError):
                skopeo.copy_to_oci(f"{rc.host}/acme/big:1", tmp_path / "big-full", "1")
            with rc.http() as http:  # a plain client gets an error too: a cut body or an error status
                try:
                    response = http.get(f"/v2/acme/big/blobs/{layer.digest}")
                except httpx.HTTPError:
                    pass
                else:
                    assert response.status_code >= 500 and "disk is full" in response.text, response.text
            served_during = hits.served
        assert hits.failures == [] and served_during > 0, hits.failures
        assert blobs.backend.stored(layer.digest) is None
        assert not blobs.backend.path_for(layer.digest).exists()
        assert rc.temp_files() == []
        assert rc.control.store.blob(layer.digest) is None
        errors = [e for e in rc.events() if e["kind"] == "blob" and e["reference"] == layer.digest]
        assert errors and all(e["result"] == "error" for e in errors), errors
        assert all("the cache's disk is full (No space left on device)" in e["detail"] for e in errors), errors

        # Not even an empty temporary file can be created: an OCI error (507), not an internal error.
        inodes = small_blobs_disk / "inodes"
        _use_up_inodes(inodes)
        with rc.http() as http:
            response = http.get(f"/v2/acme/big/blobs/{layer.digest}")
            assert response.status_code == 507, response.text
            error = response.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert error["message"].startswith("the cache's disk is full (No space left on device)"), error
            assert http.get(f"/v2/acme/small/blobs/{small.layers[0].digest}").content == small.layers[0].data
        refused = [e for e in rc.events() if e["reference"] == layer.digest and e["status"] == 507]
        assert [(e["result"], e["detail"]) for e in refused] == [("error", error["message"])]
        shutil.rmtree(inodes)

        assert rc.proxy.running, "the proxy survived"
        with rc.http() as http:
            assert http.get("/v2/").status_code == 200
        filler.unlink()  # space is freed: the same pull now succeeds
        front.mode = PASS
        assert_pulled(skopeo.copy_to_oci(f"{rc.host}/acme/big:1", tmp_path / "big", "1"), "1", big)
        rc.settle()
        assert blobs.backend.path_for(layer.digest).read_bytes() == layer.data
        assert_pulled(skopeo.copy_to_oci(f"{rc.host}/acme/small:1", tmp_path / "small-again", "1"), "1", small)
        assert rc.temp_files() == []
    finally:
        rc.proxy.stop()
        rc.control.close()
        front.stop()


class _DiskFlush:
    """``os.fsync`` of one blob's temporary file made slow (held until ``release``) or failing (``error``);
    every other fsync of the process goes through unchanged."""

    def __init__(self, digest: str, error: OSError | None = None) -> None:
        self.encoded = digest.partition(":")[2]
        self.error = error
        self.entered = threading.Event()
        self.released = threading.Event()
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if self.encoded in target and "tmp" in target:
            self.entered.set()
            if self.error is not None:
                raise self.error
            self.released.wait(30)
        self._fsync(fd)


@pytest.fixture
def big_layer(regcache, anonymous_registry, push_image) -> PushedImage:
    regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("flush-rule", f"{anonymous_registry.host}/acme/*", "acme/*")
    return push_image(anonymous_registry, "acme/flush", "1", layers=[3 * MiB])


def test_a_slow_disk_flush_does_not_hold_back_a_clients_last_byte(regcache, anonymous_registry, big_layer,
                                                                   monkeypatch):
    layer = big_layer.layers[0]
    flush = _DiskFlush(layer.digest)
    monkeypatch.setattr(os, "fsync", flush)
    try:
        with httpx.Client(base_url=regcache.url, timeout=10) as http:  # the flush is held for 30 s
            first = http.get(f"/v2/acme/flush/blobs/{layer.digest}")
            assert first.status_code == 200 and first.content == layer.data
            assert flush.entered.wait(10) and not flush.released.is_set()
            assert regcache.blob_files() == [], "stored before its flush returned"
            # a request while the flush is held joins the download, verified and not yet stored: a hit
            second = http.get(f"/v2/acme/flush/blobs/{layer.digest}")
            assert second.status_code == 200 and second.content == layer.data
            head = http.head(f"/v2/acme/flush/blobs/{layer.digest}")
            assert head.status_code == 200 and head.headers["content-length"] == str(layer.size)
            assert not flush.released.is_set()
    finally:
        flush.released.set()
    regcache.settle()
    assert [p.read_bytes() == layer.data for p in regcache.blob_files()] == [True]
    assert len(anonymous_registry.blob_gets(digest=layer.digest)) == 1
    results = [(e["method"], e["result"], e["detail"]) for e in regcache.events() if e["reference"] == layer.digest]
    assert results == [("GET", "miss", None), ("GET", "hit", None), ("HEAD", "hit", None)], results


def test_a_disk_flush_failing_after_the_digest_verified_costs_the_clients_nothing_and_stores_nothing(
        regcache, anonymous_registry, big_layer, monkeypatch, caplog):
    layer = big_layer.layers[0]
    flush = _DiskFlush(layer.digest, OSError(errno.EIO, "Input/output error"))
    monkeypatch.setattr(os, "fsync", flush)
    with regcache.http() as http:
        response = http.get(f"/v2/acme/flush/blobs/{layer.digest}")
        assert response.status_code == 200 and response.content == layer.data
    assert flush.entered.wait(10)
    regcache.settle()
    assert regcache.temp_files() == []
    assert regcache.blob_files() == [] and regcache.control.store.blob(layer.digest) is None
    said = [r.getMessage() for r in caplog.records if "Input/output error" in r.getMessage()]
    assert said and said[0].startswith(f"served {layer.digest}, but could not store it: "), caplog.text
    monkeypatch.setattr(os, "fsync", flush._fsync)  # the disk is well again: the next pull stores it
    with regcache.http() as http:
        assert http.get(f"/v2/acme/flush/blobs/{layer.digest}").content == layer.data
    regcache.settle()
    assert [p.read_bytes() == layer.data for p in regcache.blob_files()] == [True]
    assert len(anonymous_registry.blob_gets(digest=layer.digest)) == 2


def test_a_stop_during_the_flush_of_a_verified_download_waits_and_keeps_it(home, keyring_env, anonymous_registry,
                                                                           push_image, monkeypatch):
    layer = push_image(anonymous_registry, "acme/flush", "1", layers=[3 * MiB]).layers[0]
    flush = _DiskFlush(layer.digest)
    monkeypatch.setattr(os, "fsync", flush)
    rc = start_regcache(home)
    try:
        rc.add_upstream(anonymous_registry)
        rc.control.create_rule("flush-rule", f"{anonymous_registry.host}/acme/*", "acme/*")
        with httpx.Client(base_url=rc.url, timeout=10) as http:
            assert http.get(f"/v2/acme/flush/blobs/{layer.digest}").content == layer.data
        assert flush.entered.wait(10)
        stopper = threading.Thread(target=rc.proxy.stop)
        stopper.start()
        time.sleep(0.5)
        assert stopper.is_alive(), "the stop did not wait for the flush of bytes a client has"
        flush.released.set()
        stopper.join(15)
        assert not stopper.is_alive()
    finally:
        flush.released.set()
        rc.proxy.stop()
        rc.control.close()
    assert _blob_path(home, layer.digest).read_bytes() == layer.data
    assert [row[:2] for row in _stored_rows(home / "state.db", layer.digest)] == [(layer.digest, layer.size)]


def test_a_warm_job_ends_once_its_layer_is_stored_not_once_it_verified(regcache, big_layer, monkeypatch):
    layer = big_layer.layers[0]
    flush = _DiskFlush(layer.digest)
    monkeypatch.setattr(os, "fsync", flush)
    done: list = []
    job = threading.Thread(target=lambda: done.append(regcache.proxy.call(lambda ops: ops.warm("acme/flush:1"))))
    job.start()
    try:
        assert flush.entered.wait(10)
        time.sleep(0.3)
        assert job.is_alive(), "the warm job reported a layer the cache did not hold yet"
    finally:
        flush.released.set()
    job.join(15)
    assert not job.is_alive() and done[0].digest == big_layer.digest
    assert regcache.control.store.blob(layer.digest) is not None
