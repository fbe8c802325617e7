"""Warm blobs, and downloads in flight, sent from their file: by the kernel's sendfile when the server offers it
(no byte read into Python, ranges included), else in bounded reads; a client that goes away mid-file is an event
that says so, and the server goes on serving."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

import regcache.proxy.http.sendfile as sendfile_module
import regcache.proxy.server as server_module
import regcache.proxy.storage.download as download_module

from .fronts import CORRUPT, THROTTLE, FaultyFront


@pytest.fixture
def zero_copy(monkeypatch):
    """The server offers the kernel's sendfile (its default; tests of the read path turn it off)."""
    monkeypatch.setattr(server_module, "OFFER_ZERO_COPY", True)


@pytest.fixture
def warm(regcache, anonymous_registry, push_image):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-rule", f"{server}/team/*", "team/*")
    image = push_image(anonymous_registry, "team/big", "1", layers=[8 * 1024 * 1024])
    layer = image.layers[0]
    with regcache.http() as http:
        assert http.get(f"/v2/team/big/blobs/{layer.digest}").content == layer.data  # cold: stored once flushed
    regcache.settle()
    return layer


def test_a_warm_blob_and_its_ranges_are_sent_without_reading_them_in_python(zero_copy, regcache, warm,
                                                                            monkeypatch):
    def no_reads(*args):
        raise AssertionError("a warm blob was read into Python")

    monkeypatch.setattr(sendfile_module.os, "pread", no_reads)
    monkeypatch.setattr(download_module.os, "pread", no_reads)
    with regcache.http() as http:
        whole = http.get(f"/v2/team/big/blobs/{warm.digest}")
        assert whole.status_code == 200 and whole.content == warm.data
        assert whole.headers["content-length"] == str(warm.size)
        part = http.get(f"/v2/team/big/blobs/{warm.digest}", headers={"Range": "bytes=1000-2999999"})
        assert part.status_code == 206 and part.content == warm.data[1000:3000000]
        assert part.headers["content-range"] == f"bytes 1000-2999999/{warm.size}"
        head = http.head(f"/v2/team/big/blobs/{warm.digest}")
        assert head.status_code == 200 and head.headers["content-length"] == str(warm.size)
    hits = [e for e in regcache.events() if e["kind"] == "blob" and e["result"] == "hit"]
    assert {e["bytes"] for e in hits if e["method"] == "GET"} >= {warm.size, 3000000 - 1000}


@pytest.mark.parametrize("kernel", [True, False], ids=["sendfile", "reads"])
def test_a_client_that_goes_away_mid_file_is_an_event_and_the_server_goes_on(regcache, warm, monkeypatch, kernel):
    monkeypatch.setattr(server_module, "OFFER_ZERO_COPY", kernel)
    host, port = regcache.host.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /v2/team/big/blobs/{warm.digest} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gone = [e for e in regcache.events() if "went away" in (e["detail"] or "")]
        if gone:
            break
        time.sleep(0.2)
    assert gone and gone[-1]["bytes"] < warm.size and gone[-1]["result"] == "hit", gone
    with regcache.http() as http:
        assert http.get(f"/v2/team/big/blobs/{warm.digest}").content == warm.data


@pytest.fixture
def small_warm(regcache, anonymous_registry, push_image):
    server = regcache.add_upstream(anonymous_registry)
    regcache.control.create_rule("team-rule", f"{server}/team/*", "team/*")
    layer = push_image(anonymous_registry, "team/small", "1", layers=[4096]).layers[0]
    with regcache.http() as http:
        assert http.get(f"/v2/team/small/blobs/{layer.digest}").content == layer.data  # cold: stored once flushed
    regcache.settle()
    return layer


def test_a_small_warm_blob_in_the_page_cache_is_read_without_a_worker_thread(regcache, small_warm, monkeypatch):
    import os

    (stored,) = [p for p in regcache.blob_files() if p.name == small_warm.digest.split(":")[1]]
    fd = os.open(stored, os.O_RDONLY)
    try:
        if sendfile_module.read_cached(fd, small_warm.size, 0) is None:
            pytest.skip("this file system cannot tell what the page cache holds (preadv RWF_NOWAIT)")
    finally:
        os.close(fd)

    def no_thread_reads(*args):
        raise AssertionError("a small cached blob took a worker-thread read")

    monkeypatch.setattr(sendfile_module.os, "pread", no_thread_reads)
    with regcache.http() as http:
        whole = http.get(f"/v2/team/small/blobs/{small_warm.digest}")
        part = http.get(f"/v2/team/small/blobs/{small_warm.digest}", headers={"Range": "bytes=10-99"})
    assert whole.status_code == 200 and whole.content == small_warm.data
    assert part.status_code == 206 and part.content == small_warm.data[10:100]


def test_a_small_blob_the_page_cache_does_not_hold_is_read_on_a_worker_thread(regcache, small_warm, monkeypatch):
    monkeypatch.setattr(sendfile_module, "read_cached", lambda fd, size, offset: None)  # "it is on disk only"
    with regcache.http() as http:
        assert http.get(f"/v2/team/small/blobs/{small_warm.digest}").content == small_warm.data


def test_read_cached_reads_only_what_the_page_cache_holds(tmp_path):
    import os

    path = tmp_path / "blob"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert sendfile_module.read_cached(fd, 0, 0) == b""
        assert sendfile_module.read_cached(fd, 4, 3) in (b"3456", None)  # None: a file system that cannot tell
        assert sendfile_module.read_cached(fd, 20, 0) is None, "a short read is no answer"
    finally:
        os.close(fd)


@pytest.fixture
def slow_upstream(regcache, anonymous_registry):
    """A front that sends blobs in 256 KiB pieces 20 ms apart: an 8 MiB layer stays in flight ~0.6 s."""
    front = FaultyFront(anonymous_registry.url, THROTTLE).start()
    regcache.control.add_upstream(front.host, front.url, "anonymous")
    regcache.control.create_rule("slow-rule", f"{front.host}/team/*", "team/*")
    yield front
    front.stop()


def _get_all(regcache, paths_and_headers):
    """GET each (path, headers) at once, one thread each: [(status, body)]."""
    results: list[tuple[int, bytes] | None] = [None] * len(paths_and_headers)

    def get(i, path, headers):
        with regcache.http() as http:
            answer = http.get(path, headers=headers)
            results[i] = (answer.status_code, answer.content)

    threads = [threading.Thread(target=get, args=(i, path, headers))
               for i, (path, headers) in enumerate(paths_and_headers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.parametrize("kernel", [True, False], ids=["sendfile", "reads"])
def test_the_clients_of_a_download_in_flight_are_sent_its_file_not_copies_read_into_python(
        regcache, anonymous_registry, push_image, slow_upstream, monkeypatch, kernel):
    """Joined clients (and the one that started the download) get the bytes from the temporary file by the
    kernel's sendfile, ranges too: the CPU of a cold pull by many clients is a warm hit's, not a read and a send
    of every byte per client. Without the server's offer they are read in pieces, as before."""
    monkeypatch.setattr(server_module, "OFFER_ZERO_COPY", kernel)
    layer = push_image(anonymous_registry, "team/cold", "1", layers=[8 * 1024 * 1024]).layers[0]
    reads: list[int] = []
    real_pread, real_cached = sendfile_module.os.pread, sendfile_module.read_cached

    def counted_pread(fd, size, offset):
        reads.append(size)
        return real_pread(fd, size, offset)

    def counted_cached(fd, size, offset):
        reads.append(size)
        return real_cached(fd, size, offset)

    monkeypatch.setattr(sendfile_module.os, "pread", counted_pread)  # os.pread for download.py too
    monkeypatch.setattr(sendfile_module, "read_cached", counted_cached)
    path = f"/v2/team/cold/blobs/{layer.digest}"
    results = _get_all(regcache, [(path, {})] * 3 + [(path, {"Range": "bytes=1000-5999999"})])
    assert results[:3] == [(200, layer.data)] * 3
    assert results[3] == (206, layer.data[1000:6000000])
    assert slow_upstream.blob_gets == 1, "one upstream download for the four clients"
    if kernel:
        assert reads == [], "bytes of the download were read into Python"
    else:
        assert sum(reads) >= 3 * layer.size
    events = [e for e in regcache.events() if e["kind"] == "blob" and e["method"] == "GET"]
    assert sorted(e["bytes"] for e in events) == sorted([layer.size] * 3 + [5999000]), events
    assert all(e["status"] in (200, 206) for e in events), events


def test_a_client_that_goes_away_from_a_download_in_flight_is_an_event_and_the_download_goes_on(
        zero_copy, regcache, anonymous_registry, push_image, slow_upstream):
    layer = push_image(anonymous_registry, "team/left", "1", layers=[8 * 1024 * 1024]).layers[0]
    host, port = regcache.host.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /v2/team/left/blobs/{layer.digest} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)  # some pieces went (or wait in the socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    deadline = time.monotonic() + 10
    gone: list[dict] = []
    while time.monotonic() < deadline and not gone:
        gone = [e for e in regcache.events() if "went away" in (e["detail"] or "")]
        time.sleep(0.2)
    assert gone and gone[-1]["bytes"] < layer.size and gone[-1]["result"] == "miss", gone
    with regcache.http() as http:  # the download went on without its client, and was kept
        assert http.get(f"/v2/team/left/blobs/{layer.digest}").content == layer.data
    assert slow_upstream.blob_gets == 1


def test_a_download_that_fails_its_digest_never_gives_a_client_its_last_byte(
        zero_copy, regcache, anonymous_registry, push_image, slow_upstream):
    """Pieces go by sendfile while the download runs; the last byte only once the digest matched."""
    layer = push_image(anonymous_registry, "team/bad", "1", layers=[4 * 1024 * 1024]).layers[0]
    slow_upstream.mode = CORRUPT
    received = 0
    with regcache.http() as http, http.stream("GET", f"/v2/team/bad/blobs/{layer.digest}") as answer:
        with pytest.raises(httpx.HTTPError):
            assert answer.status_code == 200  # the start went out before the digest was known
            for chunk in answer.iter_bytes():
                received += len(chunk)
    assert received < layer.size
    assert regcache.temp_files() == []


def test_a_slow_upstream_reaches_the_clients_of_its_download_at_once_not_a_wake_up_size_later(
        zero_copy, regcache, anonymous_registry, push_image, slow_upstream):
    """Readers wake every NOTIFY_EVERY bytes or NOTIFY_INTERVAL, whichever comes first: at 16 KiB per 50 ms a
    client's first bytes come within moments, not after the 4 MiB a wake-up waits for on a fast link (~13 s)."""
    from regcache.proxy.storage import blobs

    layer = push_image(anonymous_registry, "team/trickle", "1", layers=[blobs.NOTIFY_EVERY + 1024 * 1024]).layers[0]
    slow_upstream.throttle_chunk, slow_upstream.throttle_delay = 16 * 1024, 0.05
    with regcache.http() as http, http.stream("GET", f"/v2/team/trickle/blobs/{layer.digest}") as answer:
        started = time.monotonic()
        first = next(answer.iter_raw())
        waited = time.monotonic() - started
        assert answer.status_code == 200 and first and layer.data.startswith(first)
    assert waited < 3, f"the first bytes came after {waited:.1f} s"


def test_a_warm_file_shorter_than_its_answer_fails_that_transfer_only(zero_copy, regcache, warm, monkeypatch):
    """A file is sent from a memory map, which must never reach past the file's end (touching that is a SIGBUS,
    which would end the process): a file cut short between the lookup and the send fails that one transfer, with
    an event that says so, and the server goes on."""
    import regcache.proxy.storage.backend as backend_module

    (stored,) = [p for p in regcache.blob_files() if p.name == warm.digest.split(":")[1]]
    original = backend_module.FilesystemBackend.stored

    def stale_size(self, digest):  # the size as looked up, before the file was cut
        blob = original(self, digest)
        return blob if blob is None else download_module.StoredBlob(blob.digest, blob.path, warm.size)

    monkeypatch.setattr(backend_module.FilesystemBackend, "stored", stale_size)
    with open(stored, "r+b") as file:
        file.truncate(warm.size // 2)
    with regcache.http() as http:
        with pytest.raises(httpx.HTTPError):  # the answer started with the full length; the body is cut
            http.get(f"/v2/team/big/blobs/{warm.digest}")
        assert http.get("/v2/").status_code == 200
    failed = [e for e in regcache.events() if e["kind"] == "blob" and e["result"] == "error"]
    assert failed and "shorter" in failed[-1]["detail"], failed
