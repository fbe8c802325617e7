"""Hostile requests: a property-based sweep over the registry API (issue "Hardening").

Requests go over a socket to the real uvicorn server (the ``regcache`` fixture), written byte for
byte with ``http.client`` so percent-encoding, odd methods and odd headers reach the server as
sent. Every answer to something malformed, unknown or unsupported is a 4xx with OCI error JSON
(HEAD: no body), never a 5xx or a traceback; well-formed requests among them get a correct answer.
An audit hook (the server runs in this process, on its own thread) checks that nothing outside the
state directory is opened for writing, created, renamed or removed while regcache answers.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.registries.images import PushedImage
from tests.registries.server import free_port

from .conftest import Regcache

SWEEP = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large])

# -- nothing outside the state directory is written ----------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
#: audit events that create, change or remove a file: (index of a path argument, index of its dir_fd)
_PATH_EVENTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "os.mkdir": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)),  # os.replace too
    "os.remove": ((0, 1),),  # os.unlink too
    "os.rmdir": ((0, 1),),
    "os.link": ((1, 3),),
    "os.symlink": ((1, 2),),
    "os.truncate": ((0, None),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "shutil.copyfile": ((1, None),),
    "tempfile.mkstemp": ((0, None),),
    "tempfile.mkdtemp": ((0, None),),
    "sqlite3.connect": ((0, None),),
}


class FileWrites:
    """Every file the process writes, creates, renames or removes while ``recording`` (an audit hook).

    Audit hooks cannot be removed, so one is installed the first time a test asks for it, for the rest
    of the session, and does nothing unless a test is recording.
    """

    def __init__(self) -> None:
        self.recording = False
        self.installed = False
        self.seen: list[tuple[str, str]] = []  # (event, absolute path)
        self._inside = threading.local()

    def install(self) -> None:
        if not self.installed:
            sys.addaudithook(self.hook)
            self.installed = True

    def hook(self, event: str, args: tuple) -> None:
        if not self.recording or getattr(self._inside, "busy", False):
            return
        if event == "open":
            path, mode, flags = args
            writes = ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                      or (isinstance(flags, int) and bool(flags & _WRITE_FLAGS)))
            targets: tuple[tuple[object, object], ...] = ((path, None),) if writes else ()
        elif event in _PATH_EVENTS:
            targets = tuple((args[i], args[d] if d is not None else None) for i, d in _PATH_EVENTS[event])
        else:
            return
        self._inside.busy = True
        try:
            for path, dir_fd in targets:
                if isinstance(path, int) or path is None or path in (":memory:", "", b""):
                    continue  # an open file descriptor: its opening was recorded
                try:
                    relative_to_fd = isinstance(dir_fd, int) and dir_fd >= 0  # -1, -100: none, the cwd
                    base = os.readlink(f"/proc/self/fd/{dir_fd}") if relative_to_fd else os.getcwd()
                    resolved = os.path.realpath(os.path.join(base, os.fsdecode(path)))
                except Exception as exc:  # never break the audited call; report it instead
                    resolved = f"<unresolvable {path!r}: {exc}>"
                self.seen.append((event, resolved))
        finally:
            self._inside.busy = False

    def outside(self, home: Path) -> list[tuple[str, str]]:
        root = os.path.realpath(home)
        return [(event, path) for event, path in self.seen
                if not (path == root or path.startswith(root + os.sep))]


_WRITES = FileWrites()


@pytest.fixture
def file_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileWrites]:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a late import's .pyc is not regcache's doing
    _WRITES.install()
    _WRITES.seen.clear()
    yield _WRITES
    _WRITES.recording = False
    _WRITES.seen.clear()


# -- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class Answer:
    method: str
    target: str
    status: int
    headers: dict[str, str]
    body: bytes

    def __str__(self) -> str:
        return f"{self.method} {self.target[:300]!r} -> {self.status} {self.headers} {self.body[:600]!r}"


class Wire:
    """Requests written as given (method, target, headers) over a kept-alive connection."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, method: str, target: str, headers: Sequence[tuple[str, str | bytes]] = (),
             body: bytes | None = None) -> Answer:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, timeout=30)
            conn = self._conn
            try:
                conn.putrequest(method, target, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # the server closed a kept-alive connection; once more on a new one
                if attempt == 2:
                    raise
                continue
            if response.will_close:
                self.close()
            return Answer(method, target, response.status,
                          {k.lower(): v for k, v in response.getheaders()}, data)
        raise AssertionError("unreachable")


# -- what every answer must look like ------------------------------------------------------------

_ERROR_CODE = re.compile(r"[A-Z][A-Z_]*")


def check_body(answer: Answer) -> None:
    """Nothing about regcache's insides leaks, and HEAD never has a body."""
    for leak in (b"Traceback", b'File "/', b"site-packages", b"Internal Server Error"):
        assert leak not in answer.body, f"{leak!r} in {answer}"
    assert answer.headers.get("docker-distribution-api-version") == "registry/2.0", str(answer)
    if answer.method == "HEAD":
        assert answer.body == b"", str(answer)


def check_error(answer: Answer, *codes: str) -> str:
    """A 4xx with OCI error JSON (HEAD: no body); returns its first code."""
    check_body(answer)
    assert 400 <= answer.status < 500, str(answer)
    if answer.method == "HEAD":
        assert answer.headers.get("content-type", "").startswith("application/json"), str(answer)
        return ""
    assert answer.headers.get("content-type", "").startswith("application/json"), str(answer)
    try:
        doc = json.loads(answer.body)
    except ValueError:
        raise AssertionError(f"not JSON: {answer}") from None
    assert isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"], str(answer)
    for error in doc["errors"]:
        assert isinstance(error, dict), str(answer)
        assert isinstance(error.get("code"), str) and _ERROR_CODE.fullmatch(error["code"]), str(answer)
        assert isinstance(error.get("message"), str) and error["message"].strip(), str(answer)
    code = doc["errors"][0]["code"]
    if codes:
        assert code in codes, str(answer)
    return code


def check_answer(answer: Answer, *, must_fail: bool, upstream_down: bool = False) -> None:
    """Hostile input gets a 4xx; anything else may succeed, but never fails with a 5xx (except that an
    upstream that is down is a 503 UNAVAILABLE when nothing is cached)."""
    check_body(answer)
    if upstream_down and answer.status == 503:
        assert not must_fail, f"hostile input reached the upstream: {answer}"
        assert json.loads(answer.body or b"{}").get("errors", [{}])[0].get("code") == "UNAVAILABLE" \
            or answer.method == "HEAD", str(answer)
        return
    if must_fail or answer.status >= 400:
        check_error(answer)
        return
    assert 200 <= answer.status < 300, str(answer)


# -- the world: a cached image, a cold one, an upstream that is down -----------------------------


class World:
    """The running regcache with its rules, and what the sweep's requests point at (a plain class, so
    hypothesis does not print its blobs when it reports a failing example)."""

    def __init__(self, regcache: Regcache, image: PushedImage, cold: PushedImage, writes: FileWrites) -> None:
        self.regcache = regcache
        self.home = regcache.home
        self.wire = Wire(regcache.host)
        self.image = image  # team/app:1.0, cached
        self.blobs = {digest: blob.data for digest, blob in image.blobs.items()}  # its config and layers
        self.cold = {digest: blob.data for digest, blob in cold.blobs.items()}  # team/cold's, never pulled
        self.writes = writes
        self.sent = 0

    def __repr__(self) -> str:
        return f"World({self.regcache.host}, {self.sent} requests sent)"

    def send(self, method: str, target: str, headers: Sequence[tuple[str, str | bytes]] = (),
             body: bytes | None = None) -> Answer:
        """One request, with nothing written outside the state directory while it is answered."""
        self.writes.recording = True
        try:
            answer = self.wire.send(method, target, headers, body)
        finally:
            self.writes.recording = False
        outside = self.writes.outside(self.home)
        self.writes.seen.clear()
        assert not outside, f"{method} {target[:200]!r} wrote outside the state directory: {outside}"
        self.sent += 1
        return answer


@pytest.fixture
def world(regcache, anonymous_registry, push_image, file_writes) -> Iterator[World]:
    server = regcache.add_upstream(anonymous_registry)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: upstream calls fail at once
    regcache.control.add_upstream(dead, f"http://{dead}", "anonymous")
    regcache.control.create_rule("everything", f"{server}/*", "*")
    regcache.control.create_rule("dead-end", f"{dead}/acme/gone", "gone")
    image = push_image(anonymous_registry, "team/app", "1.0", layers=[3_000, 1_000])
    cold = push_image(anonymous_registry, "team/cold", "1", layers=[700] * 6)
    world = World(regcache, image, cold, file_writes)
    warm = world.wire.send("GET", "/v2/team/app/manifests/1.0", [("Accept", image.media_type)])
    assert warm.status == 200 and warm.body == image.manifest, str(warm)
    for digest, data in world.blobs.items():
        answer = world.wire.send("GET", f"/v2/team/app/blobs/{digest}")
        assert answer.status == 200 and answer.body == data, str(answer)
    regcache.settle()  # clients have a blob once it verified; it is stored moments later
    store = regcache.server.app.state.registry.cache.blobs
    assert all(store.backend.stored(digest) for digest in world.blobs)
    yield world
    world.wire.close()


# -- strategies ----------------------------------------------------------------------------------

LOWER_DIGITS = "abcdefghijklmnopqrstuvwxyz0123456789"
HEX = "0123456789abcdef"


def _word(alphabet: str, min_size: int = 1, max_size: int = 8) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map("".join)


#: a valid path component (lower-case alphanumerics, single separators between them)
good_segments = st.builds(lambda a, sep, b: a + sep + b if b else a, _word(LOWER_DIGITS),
                          st.sampled_from(["", ".", "_", "__", "-", "--"]),
                          st.one_of(st.just(""), _word(LOWER_DIGITS)))
#: path components no repository name may contain, as written in the URL
BAD_SEGMENTS = [
    "..", ".", "%2e%2e", "%2E%2E", "%2e", ".%2e", "..%2f..", "%2f", "%2F", "", "%00", "a%00b", "%ff", "a%ff",
    "%c3%28", "%fe%ff", "%e2%82", "%ed%a0%80", "%c0%ae%c0%ae", "%ef%bc%8e%ef%bc%8e", "%e2%84%aa", "%c4%b0",
    "%0a", "a%0ab", "%0d%0a", "%09", "%20", "a%20b", "%25", "%", "a%", "%zz", "%u002e", "UPPER", "Mixed", "A",
    "a" * 300, "%5c", "..%5c..", "~", "%7e", "a;b", "a:b", "a@b", "a,b", "%2a", "*", "-a", "a-", "_a",
    "a.", "a...b", "a._b", "%3f", "%23", "'", "%22", "%3c%3e", "$%7bjndi%7d", "%e3%81%82", "%f0%9f%92%a9",
]
bad_segments = st.sampled_from(BAD_SEGMENTS)
BAD_NAMES = [
    "a" * 300, "/".join(["ab"] * 120), "a//b", "/a", "a/", "//", "../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
    "..%2f..%2fetc%2fpasswd", "team/app/../app", "team/./app", "%2fetc%2fpasswd", "TEAM/APP", "team/app%00",
    "team/app%0a", "gone/", "/gone",
]


@dataclass(frozen=True)
class Part:
    """One piece of a request as written, and whether it alone makes the request invalid."""

    text: str
    bad: bool


names = st.one_of(
    st.lists(st.one_of(good_segments.map(lambda s: Part(s, False)), bad_segments.map(lambda s: Part(s, True))),
             min_size=1, max_size=4).map(
        lambda parts: Part("/".join(p.text for p in parts),
                           any(p.bad for p in parts) or len("/".join(p.text for p in parts)) > 255)),
    st.sampled_from(["team/app", "team/cold", "gone", "library/nothing", "team%2fapp", "te%61m/app"]).map(
        lambda s: Part(s, False)),  # the last two are valid once percent-decoded
    st.sampled_from(BAD_NAMES).map(lambda s: Part(s, True)),
)

A64 = "a" * 64
BAD_DIGESTS = [
    "sha256:zz", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:" + "a" * 63, "sha256:" + "a" * 65,
    "SHA256:" + A64, "Sha256:" + A64, "sha256:" + "A" * 64, "sha512:" + A64, "sha384:" + "a" * 96, "sha256:", ":",
    ":" + A64, "sha256", A64, "sha256:" + "g" * 64, "sha256:" + "a" * 63 + "%00",
    "sha256:" + A64 + "%0a", "sha256::" + A64, "sha256:" + "a" * 5000, "blake3:" + A64, "sha256+b64:" + A64,
    "%ff:%ff", "sha256:%2e%2e", "sha256:" + "a" * 62 + "%ff", "sha256:..%2f..%2f" + "a" * 58, "sha256:-" + "a" * 63,
    "sha256:" + A64 + "%20",
]
digests = st.one_of(
    _word(HEX, 64, 64).map(lambda h: Part(f"sha256:{h}", False)),
    _word(HEX, 128, 128).map(lambda h: Part(f"sha512:{h}", False)),
    st.sampled_from(["%73ha256:" + A64, "sha256%3a" + A64, "sha256:" + "%61" * 64]).map(
        lambda s: Part(s, False)),  # valid once percent-decoded
    st.sampled_from(BAD_DIGESTS).map(lambda s: Part(s, True)),
    st.builds(lambda algorithm, encoded: Part(f"{algorithm}:{encoded}", True),
              st.sampled_from(["sha256", "sha512", "md5", "SHA256", "sha1", "", "sha-256"]),
              _word(HEX + "xyzXYZ.-_=+", 0, 140)).filter(lambda p: not re.fullmatch(
                  r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", p.text)),
)
TAG_CHARS = "abcXYZ019._-"
BAD_TAGS = ["", ".", "..", "%2e%2e", "-latest", ".hidden", "a" * 129, "latest%00", "a%ff", "a%20b", "%c3%28",
            "a:b", "a@b", "a%2fb", "%2e", "latest%0a", "*", "~", "a" * 5000]
references = st.one_of(
    st.sampled_from(["1.0", "latest", "nope", "TAG", "v_1"]).map(lambda s: Part(s, False)),
    st.builds(lambda a, b: Part(a + b, False), _word("abc019_"), _word(TAG_CHARS, 0, 20)),
    st.sampled_from(BAD_TAGS).map(lambda s: Part(s, True)),
    digests,
)
BAD_METHODS = ["PUT", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "MKCOL", "LOCK", "COPY",
               "MOVE", "BREW", "get", "head", "post", "put", "delete", "Get", "GeT"]
methods = st.one_of(st.sampled_from(["GET", "HEAD"]).map(lambda m: Part(m, False)),
                    st.sampled_from(BAD_METHODS).map(lambda m: Part(m, True)))
QUERIES = ["", "n=-1", "n=99999999999999999999", "n=" + "9" * 5000, "n=" + "0" * 5000 + "1", "n=%C2%B2",
           "n=%D9%A3", "n=1e3", "n=0x10", "n=", "n=%00", "n=1&n=2", "n=+1", "n=%201", "n=1.5", "last=%00",
           "last=%ff", "last=" + "z" * 5000, "ns=../../etc", "ns=%00", "ns=" + "a" * 5000, "ns=docker.io",
           "ns=%2e%2e", "ns=HTTP://evil", "%ff=%ff", "&&&", "=", "n=0", "n=1", "last=a", "n=2&last=",
           "digest=sha256:zz", "mount=x&from=../y", "ns=127.0.0.1:1", "n=-0", "last=%ed%a0%80"]
queries = st.sampled_from(QUERIES)


def _endpoint(shape: str, name: Part, ref: Part, digest: Part) -> Part:
    """A /v2/ path for one of the API's endpoint shapes; bad if any piece that reaches the parser is."""
    if shape == "manifests":
        return Part(f"/v2/{name.text}/manifests/{ref.text}", name.bad or ref.bad)
    if shape == "blobs":
        return Part(f"/v2/{name.text}/blobs/{digest.text}", name.bad or digest.bad)
    if shape == "referrers":
        return Part(f"/v2/{name.text}/referrers/{digest.text}", name.bad or digest.bad)
    if shape == "tags":
        return Part(f"/v2/{name.text}/tags/list", name.bad)
    if shape == "uploads":
        return Part(f"/v2/{name.text}/blobs/uploads/{ref.text if ref.bad else ''}", True)
    if shape == "malformed":
        return Part(f"/v2/{name.text}/{ref.text}", True)
    return Part(shape, shape not in ("/v2/", "/v2", "/v2//", "/v2/_catalog", "/%76%32/"))


ENDPOINT_SHAPES = ["manifests", "blobs", "referrers", "tags", "uploads", "malformed", "/v2/", "/v2",
                   "/v2/_catalog", "/v2/_catalog/", "/v2//", "/", "/v1/", "/v2x", "/V2/", "/%76%32/", "/v2/..",
                   "/v2/../etc/passwd", "//v2/", "/favicon.ico", "/v2/_catalog%00", "/v2/%00", "/v2/%ff",
                   "/v2/tags/list", "/v2/manifests/latest", "/v2/blobs/uploads/", "*"]
endpoints = st.builds(_endpoint, st.sampled_from(ENDPOINT_SHAPES), names, references, digests)


# -- properties ----------------------------------------------------------------------------------


@SWEEP
@given(method=methods, endpoint=endpoints, query=queries,
       body=st.sampled_from([None, b"", b"{}", b"x" * 4096]))
def test_any_method_on_any_endpoint_shape(world: World, method: Part, endpoint: Part, query: str,
                                          body: bytes | None) -> None:
    """Hostile names, references, digests, methods and paths on every endpoint: 4xx OCI errors, never a 5xx."""
    assume(not (endpoint.text == "*" and query))
    target = endpoint.text + (f"?{query}" if query else "")
    answer = world.send(method.text, target, body=body if method.text not in ("GET", "HEAD") else None)
    check_answer(answer, must_fail=method.bad or endpoint.bad,
                 upstream_down=endpoint.text.startswith("/v2/gone/") and "ns=" not in query)
    if method.bad and not endpoint.bad and answer.status == 405:
        assert answer.headers.get("allow") in (None, "GET, HEAD"), str(answer)


def _satisfiable(header: str, size: int) -> tuple[int, int] | None:
    """The byte range a well-formed, satisfiable single range asks for (end exclusive), else None."""
    m = re.fullmatch(r"bytes=([0-9]+)-([0-9]*)", header)
    if m:
        first = m.group(1).lstrip("0") or "0"
        last = (m.group(2).lstrip("0") or "0") if m.group(2) else ""
        if len(first) > 18:
            return None
        start = int(first)
        end = size if not last or len(last) > 18 else min(int(last) + 1, size)
        return (start, end) if start < size and end > start else None
    m = re.fullmatch(r"bytes=-([0-9]+)", header)
    if m:
        digits = m.group(1).lstrip("0")
        if not digits:
            return None
        n = int(digits) if len(digits) <= 18 else size
        return (max(size - n, 0), size)
    return None


NUMBERS = st.one_of(st.integers(-5, 5000).map(str), st.sampled_from(
    ["", "99999999999999999999", "9" * 5000, "0" * 5000 + "7", "-1", "--1", "+1", "1e3", "0x10", " 1", "1 ",
     "1.0", "²", "18446744073709551616", "9223372036854775807", "9223372036854775808"]))
RANGE_GARBAGE = [
    "", "bytes", "bytes=", "bytes=-", "bytes=--", "bytes=0-1,5-6", "bytes=0-1, 5-6", "bytes=0-0,-1", "bytes=10-5",
    "bytes=-0", "bytes=-1-2", "bytes=0--1", "bytes=1-2-3", "bytes==0-1", "items=0-1", "pages=1-2", "Bytes=0-1",
    "BYTES=0-1", "bytes 0-1", "bytes=0-1;", "bytes=a-b", "bytes=\u00ff-1", "bytes=0-1\t", " bytes=0-1 ",
    "bytes=0-" + "1," * 3000, "bytes=" + "0-1," * 2000 + "0-1", "x" * 8000, "bytes=\u00a00-1", "bytes=0-0x10",
]
ranges = st.one_of(
    st.sampled_from(RANGE_GARBAGE),
    st.builds(lambda unit, a, b: f"{unit}={a}-{b}", st.sampled_from(["bytes", "bytes", "bytes", "Bytes", "octets"]),
              NUMBERS, NUMBERS),
    st.builds(lambda a: f"bytes=-{a}", NUMBERS),
    st.lists(st.builds(lambda a, b: f"{a}-{b}", NUMBERS, NUMBERS), min_size=2, max_size=5).map(
        lambda rs: "bytes=" + ",".join(rs)),
)


@SWEEP
@given(which=st.sampled_from(["hit", "hit", "hit", "cold", "gone"]), index=st.integers(0, 100),
       method=st.sampled_from(["GET", "GET", "GET", "HEAD"]), range_header=ranges,
       repeat=st.booleans())
def test_bad_ranges_on_cached_and_cold_blobs(world: World, which: str, index: int, method: str, range_header: str,
                                             repeat: bool) -> None:
    """Garbage, multiple, reversed, huge and negative ranges on stored blobs, cold downloads and a repository whose
    upstream is down: 206 with exactly the bytes asked for, or 416 RANGE_INVALID, never a 5xx."""
    pool = world.cold if which == "cold" else world.blobs
    digest = sorted(pool)[index % len(pool)]
    data = pool[digest]
    name = {"hit": "team/app", "cold": "team/cold", "gone": "gone"}[which]
    headers = [("Range", range_header)] * (2 if repeat else 1)
    answer = world.send(method, f"/v2/{name}/blobs/{digest}", headers)
    check_body(answer)
    if which == "gone" and answer.status == 503:  # the upstream is down and cannot confirm the blob
        assert method == "HEAD" or json.loads(answer.body)["errors"][0]["code"] == "UNAVAILABLE", str(answer)
        return
    if method == "HEAD":
        assert answer.status == 200 and answer.headers["content-length"] == str(len(data)), str(answer)
        return
    if answer.status >= 400:
        code = check_error(answer, "RANGE_INVALID")
        assert answer.status == 416 and code == "RANGE_INVALID", str(answer)
        expected = None if repeat else _satisfiable(range_header, len(data))
        assert expected is None, f"a satisfiable range was refused: {answer}"
        return
    if answer.status == 200:  # a server may ignore a Range it cannot parse; then it sends everything
        assert answer.body == data, str(answer)
        return
    assert answer.status == 206, str(answer)
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", answer.headers.get("content-range", ""))
    assert m and int(m.group(3)) == len(data), str(answer)
    start, end = int(m.group(1)), int(m.group(2)) + 1
    assert 0 <= start < end <= len(data) and answer.body == data[start:end], str(answer)
    assert answer.headers["content-length"] == str(end - start), str(answer)
    expected = None if repeat else _satisfiable(range_header, len(data))
    if expected is not None:
        assert (start, end) == expected, str(answer)


MEDIA_TYPES = ["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.v2+json", "*/*", "application/json", "text/html"]
ACCEPT_GARBAGE = [
    "", ",", ",,,,", ";;;", "*/*;q=0", "application/json;q=abc", "a" * 65536, "*/*," * 16384,
    ", ".join(f"application/x-{i}" for i in range(5000)), ", ".join(["*/*"] * 3000), "\u00ff\u00fe" * 1000,
    ";q=1," * 5000, "application/vnd.oci.image.manifest.v1+json;" + "p=1;" * 5000,
]


@SWEEP
@given(method=st.sampled_from(["GET", "HEAD"]), ref=st.sampled_from(["tag", "digest", "missing", "gone"]),
       accepts=st.lists(st.one_of(st.sampled_from(ACCEPT_GARBAGE), st.sampled_from(MEDIA_TYPES),
                                  st.lists(st.sampled_from(MEDIA_TYPES + ["x/y", ""]), max_size=300).map(
                                      ", ".join)), min_size=1, max_size=4))
def test_huge_and_garbled_accept_headers(world: World, method: str, ref: str, accepts: list[str]) -> None:
    """64 KiB Accept headers, thousands of types, garbage: the manifest (its digest matching its bytes), a 4xx
    OCI error (431 for a request head over the limit), or 503 from the repository whose upstream is down."""
    path = {"tag": "/v2/team/app/manifests/1.0", "digest": f"/v2/team/app/manifests/{world.image.digest}",
            "missing": "/v2/team/app/manifests/missing", "gone": "/v2/gone/manifests/1"}[ref]
    answer = world.send(method, path, [("Accept", value) for value in accepts])
    check_answer(answer, must_fail=ref == "missing", upstream_down=ref == "gone")
    if answer.status == 200:
        assert answer.headers["docker-content-digest"].startswith("sha256:"), str(answer)
        if method == "GET":
            assert "sha256:" + hashlib.sha256(answer.body).hexdigest() == answer.headers["docker-content-digest"]


@SWEEP
@given(endpoint=st.sampled_from(["/v2/_catalog", "/v2/team/app/tags/list", "/v2/gone/tags/list",
                                 "/v2/team/app/manifests/1.0", f"/v2/team/app/referrers/sha256:{A64}"]),
       method=st.sampled_from(["GET", "HEAD"]),
       params=st.lists(st.one_of(queries, st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["n", "last", "ns"]),
                                                    _word("az09%.-/:", 0, 30))), max_size=4))
def test_query_strings(world: World, endpoint: str, method: str, params: list[str]) -> None:
    """n=-1, n with 5,000 digits or non-ASCII digits, last=%00, ns=../../etc: a bad n is a 400 before any upstream
    is asked; pages never hold more than n entries."""
    query = "&".join(params)
    answer = world.send(method, endpoint + (f"?{query}" if query else ""))
    pairs = [p.partition("=") for p in query.split("&") if p]
    n_values = [v for k, _, v in pairs if k == "n"]
    n_bad = bool(n_values) and not re.fullmatch(r"\d+", n_values[-1]) and endpoint.endswith(("_catalog", "list"))
    ns = [v for k, _, v in pairs if k == "ns"][-1:]  # the last one counts
    check_answer(answer, must_fail=n_bad, upstream_down=endpoint.startswith("/v2/gone/") and not (ns and ns[0]))
    if n_bad and method == "GET":
        assert check_error(answer) == "PAGINATION_NUMBER_INVALID", str(answer)
    if answer.status == 200 and method == "GET" and endpoint.endswith(("_catalog", "list")):
        doc = json.loads(answer.body)
        listed = doc["repositories"] if endpoint.endswith("_catalog") else doc["tags"]
        assert isinstance(listed, list) and all(isinstance(item, str) for item in listed), str(answer)
        if n_values and re.fullmatch(r"\d{1,6}", n_values[-1]):
            assert len(listed) <= int(n_values[-1]), str(answer)


def test_the_sweep_reaches_deep_code_paths(world: World) -> None:
    """The fixtures' rules route requests past NAME_UNKNOWN: to cached blobs, cold ones and a failing upstream."""
    digest = sorted(world.blobs)[0]
    hit = world.send("GET", f"/v2/team/app/blobs/{digest}", [("Range", "bytes=1-2")])
    assert hit.status == 206 and hit.body == world.blobs[digest][1:3]
    cold = sorted(world.cold)[0]
    miss = world.send("GET", f"/v2/team/cold/blobs/{cold}", [("Range", "bytes=-3")])
    assert miss.status == 206 and miss.body == world.cold[cold][-3:]
    gone = world.send("GET", "/v2/gone/manifests/1")
    assert gone.status == 503 and json.loads(gone.body)["errors"][0]["code"] == "UNAVAILABLE"
    unknown = world.send("GET", "/v2/library/nothing/manifests/1")
    assert check_error(unknown, "MANIFEST_UNKNOWN", "NAME_UNKNOWN")


def test_the_recorder_sees_writes_outside_the_state_directory(file_writes: FileWrites, tmp_path: Path) -> None:
    """The audit hook the sweep relies on notices each kind of write, and only outside the state directory."""
    home = tmp_path / "home"
    home.mkdir()
    file_writes.recording = True
    try:
        (home / "inside").write_bytes(b"x")
        (tmp_path / "written").write_bytes(b"x")
        os.close(os.open(tmp_path / "created", os.O_WRONLY | os.O_CREAT, 0o600))
        os.mkdir(tmp_path / "made")
        os.rename(home / "inside", tmp_path / "moved")
        os.remove(tmp_path / "moved")
        (tmp_path / "written").read_bytes()  # reading is fine
    finally:
        file_writes.recording = False
    outside = file_writes.outside(home)
    assert [event for event, _ in outside] == ["open", "open", "os.mkdir", "os.rename", "os.remove"]
    assert [Path(path).name for _, path in outside] == ["written", "created", "made", "moved", "moved"]


def send_raw(host: str, request: bytes) -> Answer:
    """Bytes no HTTP client library would send, over a fresh connection; the answer as http.client reads it."""
    address, _, port = host.rpartition(":")
    with socket.create_connection((address, int(port)), timeout=30) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and hung up before it read everything: read that answer
        response = http.client.HTTPResponse(sock, method="GET")
        response.begin()
        body = response.read()
    return Answer("GET", repr(request[:300]), response.status, {k.lower(): v for k, v in response.getheaders()},
                  body)


RAW_TARGETS = [b"/v2/\xff/manifests/1", b"/v2/team/app/manifests/1.0\x00", b"/v2/a b/tags/list",
               b"/v2/\xc3\x28/tags/list", b"/v2/team/app/blobs/sha256:\xff", b"/v2/team\x7fapp/tags/list",
               b"/v2/team/app/manifests/\x01", b"/v2/\t/tags/list", b"", b"v2/", b"/v2/\x80" * 2000]
RAW_HEADERS = [b"Range: bytes=0-1\x00", b"Accept: \x01", b"Bad Header: x", b"NoColon", b": empty-name",
               b"Accept: " + b"a" * 20_000, b"X: y\r\n" * 2000, b"Host: a\r\nHost: b", b"Content-Length: -1",
               b"Content-Length: 1, 2", b"Transfer-Encoding: chunked\r\nContent-Length: 3",
               b"Transfer-Encoding: gzip", b" folded: header"]
RAW_REQUEST_LINES = [b"GET /v2/ HTTP/1.1 extra", b"GET  /v2/ HTTP/1.1", b"GET /v2/",
                     b"G\x00T /v2/ HTTP/1.1", b"GET\t/v2/ HTTP/1.1", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                     b"/v2/ GET HTTP/1.1", b"GET /v2/ HTTPS/1.1", b"GET /v2/ HTTP/1.1.1"]


@SWEEP
@given(kind=st.sampled_from(["target", "header", "line"]), target=st.sampled_from(RAW_TARGETS),
       header=st.sampled_from(RAW_HEADERS), line=st.sampled_from(RAW_REQUEST_LINES))
def test_requests_no_http_client_would_send(world: World, kind: str, target: bytes, header: bytes,
                                            line: bytes) -> None:
    """What h11 (under uvicorn) refuses is answered with OCI error JSON too, not with uvicorn's plain text."""
    head = {"target": b"GET " + target + b" HTTP/1.1\r\nHost: localhost",
            "header": b"GET /v2/team/app/manifests/1.0 HTTP/1.1\r\nHost: localhost\r\n" + header,
            "line": line + b"\r\nHost: localhost"}[kind]
    world.writes.recording = True
    try:
        answer = send_raw(world.regcache.host, head + b"\r\nConnection: close\r\n\r\n")
    finally:
        world.writes.recording = False
    assert not world.writes.outside(world.home), world.writes.outside(world.home)
    world.writes.seen.clear()
    check_answer(answer, must_fail=kind != "header")
