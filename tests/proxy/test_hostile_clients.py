"""Hostile clients (issue: every input bounded): slow and idle connections, a connection flood, forged forwarding
headers, DNS rebinding, /metrics without a token, wrong-password floods and name enumeration by timing.

Everything runs against the real server (uvicorn with our protocol) on loopback addresses; the login floods and
the slowloris run against `regcache serve` as a process of its own, so the test's own threads do not slow it.
"""

from __future__ import annotations

import base64
import json
import resource
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.login_throttle import ADDRESS_THRESHOLD, LoginThrottle, address_key
from regcache.proxy.server import ListenError, ProxyServer, connection_cap
from tests.helpers.cli import cli, ok
from tests.helpers.hostile_upstream import HostileUpstream
from tests.proxy.conftest import Regcache, start_regcache


def _basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def _error(answer: httpx.Response) -> dict:
    return answer.json()["errors"][0]


@pytest.fixture
def configured(home: Path, keyring_env) -> Iterator:
    """``configured(**settings)``: a regcache started after these settings were set (they are read at start)."""
    started: list[Regcache] = []

    def start(trusted_proxies: tuple[str, ...] = (), **settings: str) -> Regcache:
        control = ControlPlane.open(home)
        try:
            for key, value in settings.items():
                control.set_setting(key.replace("_", "-"), value)
        finally:
            control.close()
        rc = start_regcache(home, trusted_proxies=trusted_proxies)
        started.append(rc)
        return rc

    yield start
    for rc in started:
        rc.proxy.stop()
        rc.control.close()


def _closed_within(sock: socket.socket, timeout: float) -> tuple[float, bytes]:
    """Seconds until the server closed ``sock`` (and what it sent first); fails if it stays open."""
    started = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {timeout} s")
    return time.monotonic() - started, received


# -- the settings ---------------------------------------------------------------------------------------------


def test_client_limits_are_settings_with_defaults_and_refuse_nonsense(home):
    shown = json.loads(ok("settings", "show", "-o", "json").stdout)
    for key in ("header-timeout", "keepalive-timeout", "max-connections", "allowed-hosts", "login-queue",
                "login-backoff"):
        assert key in shown and shown[key] is None  # unset: the default
    assert ok("settings", "set", "allowed-hosts", "Cache.Example.com., [fd00::1]").stderr.strip() == (
        "allowed-hosts = cache.example.com,[fd00::1]")
    assert json.loads(ok("settings", "show", "-o", "json").stdout)["allowed-hosts"] == "cache.example.com,[fd00::1]"
    assert ok("settings", "set", "header-timeout", "30s").stderr.strip() == "header-timeout = 30s"
    for key, value in (("header-timeout", "0"), ("keepalive-timeout", "2h"), ("max-connections", "0"),
                       ("max-connections", "1e3"), ("login-queue", "2000000"), ("allowed-hosts", "http://x"),
                       ("allowed-hosts", "cache:5000")):
        refused = cli("settings", "set", key, value)
        assert refused.exit_code == 1 and refused.stderr.startswith("error: "), (key, value, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert json.loads(ok("settings", "show", "-o", "json").stdout)["header-timeout"] == "30s"


def test_the_connection_cap_leaves_files_for_the_rest():
    assert connection_cap(1024, 1_048_576) == 1024
    # the database, blobs, upstream connections and connections not yet seen by the guard need files too
    assert connection_cap(1024, 1024) == 1024 - 128 - 3 * 64
    assert connection_cap(1024, 40) == 16


def test_running_out_of_files_while_accepting_is_one_warning_not_a_traceback_per_accept(caplog):
    import asyncio
    import errno

    from regcache.proxy.server import _AcceptErrors

    loop = asyncio.new_event_loop()
    try:
        with _AcceptErrors(loop).installed(), caplog.at_level("WARNING"):
            for _ in range(100):  # what asyncio reports for each accept of a batch
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(errno.EMFILE, "Too many open files")})
            loop.call_exception_handler({"message": "something else", "exception": RuntimeError("kept")})
        assert loop.get_exception_handler() is None  # the previous handler is back
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records if r.name == "regcache.server"] == [
        "out of open files while accepting connections (Too many open files); accepting again in a second"]
    assert any(r.name == "asyncio" and "something else" in r.getMessage() for r in caplog.records)


# -- slow and idle connections ------------------------------------------------------------------------------------


def test_a_request_head_must_arrive_within_the_header_timeout(configured):
    rc = configured(header_timeout="1.5s", keepalive_timeout="30s")
    address = (rc.server.address.host, rc.server.address.port)

    dripping = socket.create_connection(address)
    dripping.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    stop = threading.Event()

    def drip() -> None:  # a header byte every 0.3 s: each read is quick, the head never completes
        while not stop.wait(0.3):
            try:
                dripping.sendall(b"X")
            except OSError:
                return

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        took, answer = _closed_within(dripping, 10)
    finally:
        stop.set()
        dripper.join()
        dripping.close()
    assert 1.0 < took < 4, took
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["errors"][0] == {
        "code": "UNSUPPORTED", "message": "the request line and headers did not arrive within 1.5 s (setting "
                                          "header-timeout)"}

    with socket.create_connection(address) as silent:  # connected, never a byte: closed without a word
        took, answer = _closed_within(silent, 10)
    assert 1.0 < took < 4 and answer == b"", (took, answer)

    # kept alive: after a response the next head has the same deadline, though the keep-alive timeout is long
    with socket.create_connection(address) as kept:
        kept.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = b""
        while not response.endswith(b"\r\n\r\n{}"):  # the whole response: head and its body
            response += kept.recv(65536)
        assert response.startswith(b"HTTP/1.1 200 ")
        for _ in range(3):
            kept.sendall(b"G")
            time.sleep(0.3)
        took, answer = _closed_within(kept, 10)
    assert took < 4 and answer.startswith(b"HTTP/1.1 408 "), (took, answer[:50])


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(configured):
    rc = configured(keepalive_timeout="1s", header_timeout="20s")
    with socket.create_connection((rc.server.address.host, rc.server.address.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = b""
        while not response.endswith(b"\r\n\r\n{}"):
            response += sock.recv(65536)
        took, answer = _closed_within(sock, 10)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert 0.7 < took < 4 and answer == b"", took
    with rc.http() as http:  # a client that keeps its connection busy is not bothered
        for _ in range(3):
            assert http.get("/v2/").status_code == 200
            time.sleep(0.5)


def _slow_manifest(rc: Regcache, upstream: HostileUpstream) -> None:
    upstream.drip["evil/slow"] = 0.2
    rc.control.add_upstream(upstream.host, upstream.url, "anonymous")
    rc.control.create_rule("evil-all", f"{upstream.host}/evil/*", "evil/*")


def test_over_the_cap_waiting_connections_go_oldest_first_and_serving_ones_stay(configured):
    rc = configured(max_connections="20", header_timeout="60s", upstream_deadline="4s")
    address = (rc.server.address.host, rc.server.address.port)
    upstream = HostileUpstream().start()
    try:
        _slow_manifest(rc, upstream)
        serving: list[httpx.Response] = []
        client = threading.Thread(target=lambda: serving.append(
            httpx.get(f"{rc.url}/v2/evil/slow/manifests/1", timeout=30)))
        client.start()  # a request being served while the connections pile up
        deadline = time.monotonic() + 10
        while ("GET", "/v2/evil/slow/manifests/1") not in upstream.requests:
            assert time.monotonic() < deadline, "the slow pull never reached the upstream"
            time.sleep(0.05)

        idle = [socket.create_connection(address) for _ in range(30)]
        time.sleep(0.5)
        with rc.http() as http:  # a new client is answered at once: it closes the oldest waiting one
            assert http.get("/v2/").status_code == 200
        closed = []
        for sock in idle:
            sock.setblocking(False)
            try:
                closed.append(sock.recv(1) == b"")
            except BlockingIOError:
                closed.append(False)
            except ConnectionResetError:
                closed.append(True)
        # 20 places: the serving one, the newest waiting ones; the first 11 went as the last ones came
        assert closed[:11] == [True] * 11 and not any(closed[13:]), closed
        client.join(30)
        assert serving and serving[0].status_code == 503, "the serving request was dropped"
        assert "upstream-deadline" in _error(serving[0])["message"]
        assert rc.server.connections is not None and rc.server.connections.refused == 0
        for sock in idle:
            sock.close()
    finally:
        upstream.stop()


def test_when_every_connection_serves_a_new_one_is_refused_with_503(configured):
    rc = configured(max_connections="16", upstream_deadline="4s")
    upstream = HostileUpstream().start()
    try:
        _slow_manifest(rc, upstream)
        answers: list[int] = []
        clients = [threading.Thread(target=lambda: answers.append(
            httpx.get(f"{rc.url}/v2/evil/slow/manifests/1", timeout=30).status_code)) for _ in range(16)]
        for each in clients:
            each.start()
        deadline = time.monotonic() + 10
        while rc.server.connections is None or rc.server.connections.open < 16:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # every head has arrived: all 16 serve
        refused = httpx.get(f"{rc.url}/v2/", timeout=10)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert _error(refused) == {"code": "UNAVAILABLE", "message": "regcache is serving its maximum of 16 "
                                                                     "connections (setting max-connections); retry "
                                                                     "shortly"}
        for each in clients:
            each.join(30)
        assert answers == [503] * 16  # each served to its end (the upstream deadline), none dropped
        with rc.http() as http:
            assert http.get("/v2/").status_code == 200
    finally:
        upstream.stop()


# -- forwarding headers, Host, /metrics ------------------------------------------------------------------------


def test_forwarding_headers_are_ignored_unless_a_trusted_proxy_sends_them(configured):
    forged = {"X-Forwarded-For": "10.9.8.7", "X-Forwarded-Proto": "https", "Forwarded": "for=10.1.1.1"}
    rc = configured()
    with rc.http() as http:
        assert http.get("/v2/unknown/manifests/1", headers=forged).status_code == 404
        assert http.get("/v2/unknown/manifests/2", headers={"X-Forwarded-For": "a[/b]c"}).status_code == 404
    assert [e["client"] for e in rc.events()] == ["127.0.0.1", "127.0.0.1"]
    rc.proxy.stop()

    behind = configured(trusted_proxies=("127.0.0.1", "10.0.0.0/8"))
    with behind.http() as http:
        http.get("/v2/unknown/manifests/3", headers={"X-Forwarded-For": "192.0.2.5, 10.9.8.7"})
        http.get("/v2/unknown/manifests/4", headers={"X-Forwarded-For": "a[/b]c"})  # not an address: ignored
        http.get("/v2/unknown/manifests/5", headers={"Forwarded": "for=192.0.2.9"})  # never read
    clients = {e["reference"]: e["client"] for e in behind.events()}
    assert (clients["3"], clients["4"], clients["5"]) == ("192.0.2.5", "127.0.0.1", "127.0.0.1")

    with pytest.raises(ListenError, match="--trusted-proxy 'proxy.lan' must be an IP address or network"):
        ProxyServer(behind.home, "127.0.0.1:0", trusted_proxies=["127.0.0.1,proxy.lan"])
    refused = cli("serve", "--listen", "127.0.0.1:0", "--trusted-proxy", "127.0.0.1", "--trusted-proxy", "*")
    assert refused.exit_code == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: --trusted-proxy '*' must be an IP address or network, e.g. 127.0.0.1 or 10.0.0.0/8 (the address "
        "the proxy in front connects from)")


@pytest.mark.parametrize("path", ["/v2/", "/metrics"])
def test_a_loopback_listener_answers_only_loopback_host_names(configured, path):
    rc = configured()
    port = rc.server.address.port
    with rc.http() as http:
        for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}"):
            assert http.get(path, headers={"Host": host}).status_code == 200, host
        for host in ("rebind.attacker.example", f"rebind.attacker.example:{port}", "127.0.0.1.nip.io", "[fd00::1]"):
            refused = http.get(path, headers={"Host": host})
            assert refused.status_code == 403, host
            assert _error(refused)["code"] == "DENIED"
        message = _error(http.get(path, headers={"Host": f"cache.example:{port}"}))["message"]
    assert message == ("this regcache listens on loopback and answers only Host localhost, 127.0.0.1 or [::1], not "
                       "'cache.example' (a defence against DNS rebinding); to answer that name too (e.g. an nginx "
                       "on this machine forwards it), run `regcache settings set allowed-hosts cache.example` and "
                       "restart the proxy")
    rc.proxy.stop()
    allowed = configured(allowed_hosts="cache.example")
    with allowed.http() as http:
        assert http.get(path, headers={"Host": "cache.example:443"}).status_code == 200
        assert http.get(path, headers={"Host": "other.example"}).status_code == 403


def test_a_listener_beyond_loopback_does_not_check_host(home, keyring_env):
    from regcache.proxy.server import EmbeddedProxy

    proxy = EmbeddedProxy(ProxyServer(home, "0.0.0.0:0", allow_anonymous=True))
    port = proxy.start().port
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/v2/", headers={"Host": "cache.example"}).status_code == 200
    finally:
        proxy.stop()


def test_metrics_need_a_client_token_whenever_pulls_do(home, keyring_env):
    from regcache.proxy.server import EmbeddedProxy

    control = ControlPlane.open(home)
    proxy = EmbeddedProxy(ProxyServer(home, "127.0.0.1:0", metrics_listen="127.0.0.1:0"))
    try:
        proxy.start()
        metrics = f"http://{proxy.server.metrics_address}/metrics"
        assert httpx.get(metrics).status_code == 200  # loopback and no token: open, like /v2/
        _, password = control.create_token("scraper", ["team/*"])  # any token will do
        refused = httpx.get(metrics)
        assert refused.status_code == 401 and _error(refused)["code"] == "UNAUTHORIZED"
        assert refused.headers["www-authenticate"] == 'Basic realm="regcache"'
        answer = httpx.get(metrics, headers=_basic("scraper", password))
        assert answer.status_code == 200 and "regcache_" in answer.text
        assert httpx.get(metrics, headers=_basic("scraper", password + "x")).status_code == 401
        assert httpx.get(metrics, headers={"Host": "rebind.example"}).status_code == 403
    finally:
        proxy.stop()

    beside = EmbeddedProxy(ProxyServer(home, "127.0.0.1:0"))  # /metrics beside /v2/
    try:
        beside.start()
        assert httpx.get(f"{beside.server.url}/metrics").status_code == 401
        assert httpx.get(f"{beside.server.url}/metrics", headers=_basic("scraper", password)).status_code == 200
    finally:
        beside.stop()

    control.delete_token("scraper")
    with pytest.raises(ListenError, match=r"refusing to serve metrics on 0\.0\.0\.0:0 \(--metrics-listen\) "
                                          r"without client authentication"):
        anyio.run(ProxyServer(home, "127.0.0.1:0", metrics_listen="0.0.0.0:0").serve)
    _, password = control.create_token("scraper", ["*"])
    exposed = EmbeddedProxy(ProxyServer(home, "127.0.0.1:0", metrics_listen="0.0.0.0:0"))
    try:
        exposed.start()
        port = exposed.server.metrics_address.port
        control.delete_token("scraper")  # the last token goes: metrics beyond loopback stay closed
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
        assert httpx.get(f"{exposed.server.url}/v2/").status_code == 200  # /v2/ on loopback: anonymous again
    finally:
        exposed.stop()
        control.close()


# -- logins ------------------------------------------------------------------------------------------------------


def test_the_back_off_refuses_an_address_after_failures_and_doubles_up_to_the_cap():
    throttle = LoginThrottle(cap=8)
    now = 1000.0
    for _ in range(ADDRESS_THRESHOLD - 1):
        throttle.failed("192.0.2.1", "ci", now)
    assert throttle.refusal("192.0.2.1", "ci", now) == 0
    throttle.failed("192.0.2.1", "ci", now)
    assert throttle.refusal("192.0.2.1", "ci", now) == 1  # refused, without a password check, for 1 s
    assert throttle.refusal("192.0.2.1", "other", now) == 1  # whatever name it tries
    assert throttle.refusal("192.0.2.2", "ci", now) == 0  # another address is not
    waits = []
    for _ in range(6):  # each failure after a refusal doubles the next one, up to the cap
        now += throttle.refusal("192.0.2.1", "ci", now)
        assert throttle.refusal("192.0.2.1", "ci", now) == 0
        throttle.failed("192.0.2.1", "ci", now)
        waits.append(throttle.refusal("192.0.2.1", "ci", now))
    assert waits == [2, 4, 8, 8, 8, 8]
    now += 60 + 8 + 1  # quiet long enough: forgiven
    throttle.failed("192.0.2.1", "ci", now)
    assert throttle.refusal("192.0.2.1", "ci", now) == 0

    off = LoginThrottle(cap=0)
    for _ in range(50):
        off.failed("192.0.2.1", "ci", now)
    assert off.refusal("192.0.2.1", "ci", now) == 0


def test_a_flood_against_a_name_guards_it_only_against_the_addresses_that_failed():
    throttle = LoginThrottle(cap=60)
    now = 0.0
    for n in range(20):  # 20 addresses, one failure each: none is refused on its own account
        throttle.failed(f"198.51.100.{n}", "alice", now)
    assert throttle.refusal("198.51.100.3", "alice", now) == 1  # the name is guarded against the guessers
    assert throttle.refusal("198.51.100.3", "bob", now) == 0
    assert throttle.refusal("203.0.113.7", "alice", now) == 0  # alice, from her own address, still logs in
    assert throttle.refusal("198.51.100.3", "alice", now + 1) == 0  # the guard ends; the next one lasts longer
    throttle.failed("198.51.100.3", "alice", now + 1)
    assert throttle.refusal("198.51.100.4", "alice", now + 1) == 2
    # the name guard is capped at half the address cap: it can never lock a name for long
    for step in range(2, 40):
        throttle.failed(f"192.0.2.{step}", "alice", now + step * 40)
    assert throttle.refusal("192.0.2.39", "alice", now + 39 * 40) <= 30


def test_ipv6_clients_count_per_64():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("127.0.0.2") == "127.0.0.2"


def _serve_with_token(home: Path, serve, *settings: tuple[str, str]):
    control = ControlPlane.open(home)
    try:
        for key, value in settings:
            control.set_setting(key, value)
        _, password = control.create_token("builder", ["*"])
    finally:
        control.close()
    return serve(), password


def _login(url: str, name: str, password: str, source: str) -> tuple[float, httpx.Response]:
    """One login from the loopback address ``source`` on a new connection; (seconds, answer)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as http:
        started = time.perf_counter()
        answer = http.get(f"{url}/v2/", headers=_basic(name, password))
        return time.perf_counter() - started, answer


def test_an_unknown_name_costs_as_much_as_a_wrong_password(home, serve):
    process, password = _serve_with_token(home, serve)
    unknown, wrong = [], []
    for n in range(20):  # serially, each from an address of its own (no back-off), interleaved
        took, answer = _login(process.url, "nobody-by-that-name", password, f"127.0.1.{n + 1}")
        assert answer.status_code == 401
        unknown.append(took)
        took, answer = _login(process.url, "builder", password[:-1] + "x", f"127.0.2.{n + 1}")
        assert answer.status_code == 401
        wrong.append(took)
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2, (statistics.median(unknown), statistics.median(wrong))
    assert _login(process.url, "builder", password, "127.0.3.1")[1].status_code == 200
    assert process.terminate()[0] == 0


def test_a_wrong_password_flood_does_not_delay_a_first_login_from_another_address(home, serve):
    process, password = _serve_with_token(home, serve)
    stop = threading.Event()
    answers: list[tuple[int, str | None, str]] = []

    def flood(worker: int) -> None:
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1"), timeout=30) as http:
            n = 0
            while not stop.is_set():
                n += 1
                answer = http.get(f"{process.url}/v2/", headers=_basic("builder", f"guess-{worker}-{n}"))
                answers.append((answer.status_code, answer.headers.get("retry-after"), _error(answer)["code"]))

    workers = [threading.Thread(target=flood, args=(n,)) for n in range(50)]
    for each in workers:
        each.start()
    try:
        time.sleep(1.5)  # the flood is on
        took, answer = _login(process.url, "builder", password, "127.0.0.2")
    finally:
        stop.set()
        for each in workers:
            each.join(30)
    assert answer.status_code == 200 and took < 1, took
    refused = [a for a in answers if a[0] == 429]
    assert refused and all(code == "TOOMANYREQUESTS" and int(after) >= 1 for _, after, code in refused)
    checked = [a for a in answers if a[0] == 401]
    # the back-off stops the password checks: a handful of scrypts, not one per guess
    assert 0 < len(checked) < 30, (len(checked), len(answers))
    assert {a[0] for a in answers} <= {401, 429}
    assert process.terminate()[0] == 0


def test_a_full_login_queue_answers_429_at_once(home, serve):
    process, password = _serve_with_token(home, serve, ("login-queue", "4"))
    answers: list[tuple[float, httpx.Response]] = []
    start = threading.Barrier(40)

    def guess(n: int) -> None:
        start.wait()
        answers.append(_login(process.url, "builder", f"wrong-{n}", f"127.0.4.{n + 1}"))

    guessers = [threading.Thread(target=guess, args=(n,)) for n in range(40)]
    for each in guessers:
        each.start()
    for each in guessers:
        each.join(60)
    statuses = sorted(answer.status_code for _, answer in answers)
    assert len(statuses) == 40 and set(statuses) == {401, 429}
    assert statuses.count(401) <= 2 + 4 + 10, statuses  # checked: those running or waiting when each arrived
    full = next(answer for _, answer in answers if answer.status_code == 429)
    assert full.headers["retry-after"] == "1"
    assert _error(full)["message"] == ("regcache is checking too many logins at once (2 running, 4 waiting: setting "
                                       "login-queue); retry in 1 s")
    assert max(took for took, answer in answers if answer.status_code == 429) < 5
    assert _login(process.url, "builder", password, "127.0.4.200")[1].status_code == 200
    assert process.terminate()[0] == 0


def test_a_verified_login_passes_while_its_address_is_in_back_off(configured):
    rc = configured()
    _, password = rc.control.create_token("ci-runner", ["*"])
    with rc.http() as http:
        assert http.get("/v2/", headers=_basic("ci-runner", password)).status_code == 200  # verified: remembered
        for n in range(ADDRESS_THRESHOLD):
            assert http.get("/v2/", headers=_basic("ci-runner", f"wrong-{n}")).status_code == 401
        refused = http.get("/v2/", headers=_basic("ci-runner", "wrong-again"))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert _error(refused)["message"] == ("too many failed logins from 127.0.0.1 (setting login-backoff); check "
                                              "the token name and password; retry in 1 s")
        assert http.get("/v2/", headers=_basic("ci-runner", password)).status_code == 200


# -- slowloris against `regcache serve` at a low open-files limit ---------------------------------------------------


@pytest.mark.slow
def test_a_pull_succeeds_while_a_thousand_half_open_connections_are_held(home, keyring_env, anonymous_registry,
                                                                         push_image):
    from tests.helpers.commands import ServeProcess

    control = ControlPlane.open(home)
    try:
        control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
        control.create_rule("app-images", f"{anonymous_registry.host}/library/app", "app")
        _, password = control.create_token("puller", ["app"])
    finally:
        control.close()
    image = push_image(anonymous_registry, "library/app", "1", layers=[300_000])
    manifest = image.manifests[0]

    def low_limit() -> None:  # in the child: 1,000 files (fewer than it is sent connections), and no way to raise them
        resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 1000))

    own = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(own[0], min(own[1], 4096)), own[1]))  # 1,000 sockets here
    process = ServeProcess(home, "--listen", "127.0.0.1:0", env=keyring_env, preexec_fn=low_limit)
    host, port = process.host.rsplit(":", 1)
    held: list[socket.socket] = []
    stop = threading.Event()
    try:
        opened = time.monotonic()
        for n in range(1000):
            sock = socket.create_connection((host, int(port)), timeout=10)
            if n % 2:
                sock.sendall(b"GET /v2/app/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(sock)
        dripping = held[1::2]

        def drip() -> None:  # half of them send a header byte every second
            while not stop.wait(1):
                for sock in dripping:
                    try:
                        sock.sendall(b"a")
                    except OSError:
                        pass

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            started = time.monotonic()
            with httpx.Client(base_url=process.url, headers=_basic("puller", password), timeout=30) as http:
                answer = http.get("/v2/app/manifests/1", headers={"Accept": manifest.media_type})
                assert answer.status_code == 200 and answer.content == manifest.data
                layer = manifest.layers[0]
                blob = http.get(f"/v2/app/blobs/{layer.digest}")
                assert blob.status_code == 200 and blob.content == layer.data
            pulled = time.monotonic() - started
            assert pulled < 5, f"the pull took {pulled:.1f} s"  # not waiting for the 10 s header timeout

            # every held connection is closed by the server within the header timeout (10 s) of its start
            deadline = opened + 10 + 8
            still_open = 0
            for sock in held:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    while sock.recv(65536):
                        pass
                except (TimeoutError, socket.timeout):
                    still_open += 1
                except OSError:
                    pass
            assert still_open == 0, f"{still_open} connections still open after {time.monotonic() - opened:.0f} s"
        finally:
            stop.set()
            dripper.join()
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, own)
        code, output = process.terminate()
    assert code == 0, output
    assert "Traceback" not in output
    cap = connection_cap(1024, 1000)
    assert (f"closed connections still sending their request head to make room (setting max-connections: {cap})"
            in output)
    assert "out of open files" not in output  # the guard kept room: no accept failed
