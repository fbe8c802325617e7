"""Run a real S3-compatible store for tests: OpenStack Swift "all in one" with s3api + tempauth.

A :class:`SwiftS3Server` owns a temporary directory holding its configs, its
rings, one storage device (a plain directory) and one log file per process, and
runs, each on a free 127.0.0.1 port:

* a private ``memcached`` (tempauth keeps its tokens and validated S3 keys there
  and refuses every request without one: ``Exception('Memcache required')``);
* the account, container and object servers (one device, one replica);
* the proxy, whose pipeline has ``s3api`` then ``tempauth`` (plus ``slo``, which
  s3api needs for multipart uploads), answering S3 on :attr:`endpoint`.

Swift comes from Debian (``python3-swift``): its servers run under
``/usr/bin/python3`` with an environment stripped of the test venv's
``PYTHON*``/``VIRTUAL_ENV`` variables, in the foreground (``workers = 0``), one
process each, logging to ``logs/<name>.log`` (``-v``: the console handler; the
syslog handler points at nothing).  Swift reads its hash prefix/suffix from
``/etc/swift/swift.conf`` (there is no option to move it); the Debian package
installs one, and :func:`ensure_swift_conf` writes it when it is missing.

Quirks of this store (Swift 2.30) that tests and the product must live with:
path-style addressing only; 5 MiB minimum part size (except the last), at most
1,000 parts; ``DeleteObjects`` needs ``Content-MD5``; ``PUT`` with
``If-None-Match: *`` answers 501.
"""

from __future__ import annotations

import configparser
import ctypes
import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import urllib.parse
from pathlib import Path

INSTALL_HINT = "apt-get install -y swift swift-proxy swift-object swift-container swift-account memcached"
"""What to run when Swift or memcached is missing."""

SYSTEM_PYTHON = "/usr/bin/python3"
"""The interpreter Debian's Swift is installed for (never the test venv's)."""

SWIFT_CONF = Path("/etc/swift/swift.conf")
"""Where every Swift process reads its hash prefix/suffix and storage policies."""

SERVERS = ("account", "container", "object", "proxy")
"""The Swift servers, in start order (the proxy last, it needs the others)."""

ACCOUNT = "test"
USER = "tester"
PASSWORD = "testing"
DEFAULT_REGION = "us-east-1"
PART_POWER = 6  # 64 partitions: plenty for one device, and the ring builds in milliseconds
DEVICE = "d1"

PROXY_PIPELINE = " ".join(
    [
        "catch_errors gatekeeper healthcheck proxy-logging",
        "cache",  # memcached: tempauth refuses every request without it ("Memcache required")
        "listing_formats",
        "s3api tempauth",  # S3 API, authenticated by tempauth (s3api must come right before it)
        "copy slo dlo",  # slo: s3api's multipart uploads are SLO manifests
        "versioned_writes",  # the proxy adds it anyway ("required filter")
        "proxy-logging proxy-server",
    ]
)

_PR_SET_PDEATHSIG = 1


class SwiftError(RuntimeError):
    """The Swift store could not be started or misbehaved."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def swift_binaries() -> dict[str, str]:
    """Return the executables the store needs: the system python, the four servers, memcached.

    Raises:
        FileNotFoundError: with the ``apt-get install`` line when one is missing.
    """
    found = {"python": SYSTEM_PYTHON, "memcached": shutil.which("memcached", path="/usr/bin:/usr/sbin")}
    for name in SERVERS:
        found[name] = f"/usr/bin/swift-{name}-server"
    missing = [path or name for name, path in found.items() if not path or not os.access(path, os.X_OK)]
    if not missing and not Path("/usr/lib/python3/dist-packages/swift/__init__.py").exists():
        missing.append("python3-swift")
    if missing:
        raise FileNotFoundError(
            f"OpenStack Swift (with s3api) is not installed ({', '.join(missing)} missing): run `{INSTALL_HINT}`"
        )
    return {name: str(path) for name, path in found.items()}


def ensure_swift_conf(path: Path = SWIFT_CONF) -> list[int]:
    """Make sure ``swift.conf`` exists with a hash prefix or suffix; return its storage-policy indexes.

    Debian's package installs one (``changeme`` prefix and suffix, policy 0),
    which is used as is.  When the file or its ``[swift-hash]`` settings are
    missing it is written (that needs root, as in CI).
    """
    parser = configparser.ConfigParser(interpolation=None)
    if path.exists():
        parser.read(path, encoding="latin1")
    has_hash = any(
        parser.get("swift-hash", key, fallback="").strip()
        for key in ("swift_hash_path_prefix", "swift_hash_path_suffix")
    )
    if not has_hash:
        if not parser.has_section("swift-hash"):
            parser.add_section("swift-hash")
        parser.set("swift-hash", "swift_hash_path_prefix", "regcache-tests")
        parser.set("swift-hash", "swift_hash_path_suffix", "regcache-tests")
        if not any(section.startswith("storage-policy:") for section in parser.sections()):
            parser.read_dict({"storage-policy:0": {"name": "Policy-0", "default": "yes"}})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="latin1") as file:
                parser.write(file)
        except PermissionError as error:
            raise PermissionError(
                f"{path} has no [swift-hash] prefix/suffix and cannot be written ({error}): "
                f"run the tests as root, or reinstall it with `{INSTALL_HINT}`"
            ) from None
    indexes = sorted(
        int(section.split(":", 1)[1]) for section in parser.sections() if section.startswith("storage-policy:")
    )
    return indexes or [0]


def _system_env() -> dict[str, str]:
    """This process's environment without the venv: no ``PYTHON*``, ``VIRTUAL_ENV``, venv on ``PATH``."""
    venv = os.environ.get("VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not (venv and p.startswith(venv))]
    env["PATH"] = os.pathsep.join(path or ["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have the kernel SIGTERM the child if pytest dies without tearing down (SIGKILL, crash)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_RING_SCRIPT = """
import json, sys
from swift.common.ring import RingBuilder
spec = json.loads(sys.argv[1])
for ring, port in spec["rings"].items():
    builder = RingBuilder(spec["part_power"], 1, 1)
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
                     "device": spec["device"], "weight": 100})
    builder.rebalance()
    builder.get_ring().save(spec["dir"] + "/" + ring + ".ring.gz")
"""


class SwiftS3Server:
    """Swift all-in-one with s3api + tempauth, on free 127.0.0.1 ports under ``root``.

    Attributes:
        root: the directory holding ``etc/`` (configs, rings), ``srv/`` (the device) and ``logs/``.
        endpoint: ``http://127.0.0.1:PORT``, the S3 (and Swift) API of the proxy.
        access_key, secret_key: the S3 credentials (tempauth ``test:tester`` / ``testing``, an admin).
        region: the region s3api signs for (``location``), ``us-east-1`` by default.
        ports: ``{"proxy"|"account"|"container"|"object"|"memcached": port}``.
    """

    access_key = f"{ACCOUNT}:{USER}"
    secret_key = PASSWORD

    def __init__(self, root: Path, *, region: str = DEFAULT_REGION) -> None:
        self.root = Path(root)
        self.region = region
        self.binaries = swift_binaries()
        self.ports: dict[str, int] = {}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token: tuple[str, str] | None = None
        self.startup_seconds: float | None = None
        self._pick_ports()

    # -- paths and addresses ----------------------------------------------

    @property
    def etc_path(self) -> Path:
        """Configs and rings (the servers' ``swift_dir``)."""
        return self.root / "etc"

    @property
    def devices_path(self) -> Path:
        """The ``devices`` directory; the only device is ``devices_path / "d1"``."""
        return self.root / "srv"

    @property
    def logs_path(self) -> Path:
        """One ``<name>.log`` per process (Swift's log lines, including the proxy's access log)."""
        return self.root / "logs"

    def log_path(self, name: str) -> Path:
        """The log of ``name`` (``proxy``, ``account``, ``container``, ``object`` or ``memcached``)."""
        return self.logs_path / f"{name}.log"

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: give it to S3 clients with path-style addressing."""
        return f"http://127.0.0.1:{self.ports['proxy']}"

    @property
    def running(self) -> bool:
        """Whether every process is alive."""
        return bool(self._processes) and all(p.poll() is None for p in self._processes.values())

    def _pick_ports(self) -> None:
        self.ports = {name: free_port() for name in (*SERVERS, "memcached")}
        if len(set(self.ports.values())) != len(self.ports):
            self._pick_ports()

    # -- configuration ----------------------------------------------------

    def _common(self, name: str) -> str:
        user = pwd.getpwuid(os.getuid()).pw_name
        return textwrap.dedent(f"""\
            [DEFAULT]
            bind_ip = 127.0.0.1
            bind_port = {self.ports[name]}
            workers = 0
            # a taken port fails fast (default: retry for 30 s), then start() moves to new ports
            bind_timeout = 1
            user = {user}
            swift_dir = {self.etc_path}
            devices = {self.devices_path}
            mount_check = false
            log_name = {name}
            log_level = INFO
            # not a socket, so no /dev/log (Swift falls back to UDP syslog on 127.0.0.1:514, unheard);
            # the -v console handler writes everything to logs/{name}.log
            log_address = {self.root / "no-syslog"}
            recon_cache_path = {self.root / "recon"}
            """)

    def _backend_conf(self, name: str) -> str:
        return self._common(name) + textwrap.dedent(f"""
            [pipeline:main]
            pipeline = healthcheck {name}-server

            [app:{name}-server]
            use = egg:swift#{name}
            # generous timeouts: a loaded CI machine must not turn into 503s or missed listings
            conn_timeout = 5
            node_timeout = 30
            container_update_timeout = 10

            [filter:healthcheck]
            use = egg:swift#healthcheck
            """)

    def _proxy_conf(self) -> str:
        return self._common("proxy") + textwrap.dedent(f"""
            [pipeline:main]
            pipeline = {PROXY_PIPELINE}

            [app:proxy-server]
            use = egg:swift#proxy
            account_autocreate = true
            conn_timeout = 5
            node_timeout = 30

            [filter:s3api]
            use = egg:swift#s3api
            location = {self.region}
            # path-style only (no storage_domain): http://127.0.0.1:PORT/bucket/key
            storage_domain =
            s3_acl = false
            allow_multipart_uploads = true
            min_segment_size = 5242880

            [filter:tempauth]
            use = egg:swift#tempauth
            user_{ACCOUNT}_{USER} = {PASSWORD} .admin
            token_life = 86400

            [filter:cache]
            use = egg:swift#memcache
            memcache_servers = 127.0.0.1:{self.ports["memcached"]}

            [filter:catch_errors]
            use = egg:swift#catch_errors

            [filter:gatekeeper]
            use = egg:swift#gatekeeper

            [filter:healthcheck]
            use = egg:swift#healthcheck

            [filter:proxy-logging]
            use = egg:swift#proxy_logging

            [filter:listing_formats]
            use = egg:swift#listing_formats

            [filter:copy]
            use = egg:swift#copy

            [filter:slo]
            use = egg:swift#slo

            [filter:dlo]
            use = egg:swift#dlo

            [filter:versioned_writes]
            use = egg:swift#versioned_writes
            """)

    def _write_configs(self, policies: list[int]) -> None:
        for path in (self.etc_path, self.devices_path / DEVICE, self.logs_path, self.root / "recon"):
            path.mkdir(parents=True, exist_ok=True)
        for name in ("account", "container", "object"):
            (self.etc_path / f"{name}-server.conf").write_text(self._backend_conf(name))
        (self.etc_path / "proxy-server.conf").write_text(self._proxy_conf())
        rings = {"account": self.ports["account"], "container": self.ports["container"]}
        for index in policies:
            rings["object" if index == 0 else f"object-{index}"] = self.ports["object"]
        spec = {"rings": rings, "dir": str(self.etc_path), "part_power": PART_POWER, "device": DEVICE}
        result = subprocess.run(
            [self.binaries["python"], "-c", _RING_SCRIPT, json.dumps(spec)],
            env=_system_env(),
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise SwiftError(f"building the rings failed:\n{result.stdout}{result.stderr}")

    # -- lifecycle --------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SwiftS3Server:
        """Write configs and rings, start memcached and the four servers, wait until all are healthy.

        When a port was taken in the meantime, everything moves to new ports (twice at most).
        """
        if self.running:
            return self
        began = time.monotonic()
        policies = ensure_swift_conf()
        for attempt in range(3):
            self._write_configs(policies)
            try:
                self._launch(timeout)
            except SwiftError as error:
                message = str(error).lower()
                if attempt < 2 and ("already in use" in message or "could not bind" in message):
                    self._pick_ports()
                    continue
                raise
            self.startup_seconds = time.monotonic() - began
            return self
        raise AssertionError("unreachable")

    def _spawn(self, name: str, argv: list[str]) -> None:
        with self.log_path(name).open("ab") as log:
            self._processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=_system_env(),
                preexec_fn=_die_with_parent,
            )

    def _launch(self, timeout: float) -> None:
        offsets = {
            name: self.log_path(name).stat().st_size if self.log_path(name).exists() else 0
            for name in (*SERVERS, "memcached")
        }
        memcached = [self.binaries["memcached"], "-l", "127.0.0.1", "-p", str(self.ports["memcached"])]
        memcached += ["-U", "0", "-m", "16", "-c", "256"]
        if os.getuid() == 0:
            memcached += ["-u", "root"]  # memcached refuses to run as root without -u
        self._spawn("memcached", memcached)
        for name in SERVERS:
            conf = str(self.etc_path / f"{name}-server.conf")
            self._spawn(name, [self.binaries["python"], self.binaries[name], conf, "-v"])
        try:
            self._wait_healthy(timeout)
        except SwiftError as error:
            logs = "\n".join(f"--- {name}.log ---\n{self._log_since(name, offset)}" for name, offset in offsets.items())
            self.stop()
            raise SwiftError(f"Swift did not start under {self.root} ({error}):\n{logs}") from None

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = [*SERVERS, "memcached"]
        while pending:
            for name in list(pending):
                process = self._processes[name]
                if process.poll() is not None:
                    raise SwiftError(f"{name} exited with status {process.returncode}")
                if self._healthy(name):
                    pending.remove(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise SwiftError(f"not healthy within {timeout}s: {', '.join(pending)}")
            time.sleep(0.05)

    def _healthy(self, name: str) -> bool:
        try:
            if name == "memcached":
                with socket.create_connection(("127.0.0.1", self.ports[name]), timeout=1.0) as sock:
                    sock.sendall(b"version\r\n")
                    return sock.recv(64).startswith(b"VERSION")
            status, body, _ = self._http(name, "GET", "/healthcheck", timeout=1.0)
            return status == 200 and body == b"OK"
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the proxy, then the storage servers, then memcached: SIGTERM, wait, SIGKILL."""
        order = ["proxy", "object", "container", "account", "memcached"]
        processes = [(name, self._processes.pop(name)) for name in order if name in self._processes]
        self._token = None
        for _, process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for _, process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> SwiftS3Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SwiftS3Server {self.endpoint} {'running' if self.running else 'stopped'}>"

    def _log_since(self, name: str, offset: int) -> str:
        path = self.log_path(name)
        if not path.exists():
            return ""
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")[-4000:]

    def log_text(self, name: str = "proxy") -> str:
        """Everything ``name`` logged so far."""
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    # -- Swift API helpers (no S3 client needed) -----------------------------

    def _http(
        self, name: str, method: str, path: str, headers: dict[str, str] | None = None, *, timeout: float = 30.0
    ) -> tuple[int, bytes, http.client.HTTPMessage]:
        connection = http.client.HTTPConnection("127.0.0.1", self.ports[name], timeout=timeout)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), response.headers
        finally:
            connection.close()

    def _auth(self) -> tuple[str, str]:
        """A tempauth token and the account path (``/v1/AUTH_test``)."""
        if self._token is None:
            status, body, headers = self._http(
                "proxy", "GET", "/auth/v1.0", {"X-Auth-User": self.access_key, "X-Auth-Key": self.secret_key}
            )
            if status // 100 != 2:
                raise SwiftError(f"tempauth refused {self.access_key}: {status} {body!r}")
            account_path = urllib.parse.urlsplit(headers["X-Storage-Url"]).path
            self._token = (headers["X-Auth-Token"], account_path)
        return self._token

    def swift(self, method: str, container: str = "", obj: str = "", query: str = "") -> tuple[int, bytes]:
        """One authenticated Swift API request on the account/``container``/``obj``."""
        token, account_path = self._auth()
        path = account_path
        if container:
            path += "/" + urllib.parse.quote(container, safe="")
        if obj:
            path += "/" + urllib.parse.quote(obj, safe="/")
        if query:
            path += "?" + query
        status, body, _ = self._http("proxy", method, path, {"X-Auth-Token": token})
        return status, body

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a Swift container) and return its name (random ``test-…`` by default)."""
        name = name or f"test-{secrets.token_hex(6)}"
        status, body = self.swift("PUT", name)
        if status not in (201, 202):
            raise SwiftError(f"creating bucket {name!r}: {status} {body!r}")
        return name

    def bucket_names(self) -> list[str]:
        """Every bucket, plus s3api's ``<bucket>+segments`` containers (multipart parts)."""
        status, body = self.swift("GET", query="format=json")
        if status == 204:
            return []
        if status != 200:
            raise SwiftError(f"listing the account: {status} {body!r}")
        return [entry["name"] for entry in json.loads(body)]

    def object_names(self, bucket: str) -> list[str]:
        """The object names in ``bucket`` (Swift listing: up to 10,000); [] when it does not exist."""
        status, body = self.swift("GET", bucket, query="format=json")
        if status in (204, 404):
            return []
        if status != 200:
            raise SwiftError(f"listing {bucket!r}: {status} {body!r}")
        return [entry["name"] for entry in json.loads(body)]

    def segment_names(self, bucket: str) -> list[str]:
        """What s3api keeps for in-progress and completed multipart uploads of ``bucket``."""
        return self.object_names(f"{bucket}+segments")

    def delete_bucket(self, name: str) -> None:
        """Delete ``name`` and its segments container with everything in them (missing is fine)."""
        for container in (name, f"{name}+segments"):
            for obj in self.object_names(container):
                status, body = self.swift("DELETE", container, obj)
                if status not in (204, 404):
                    raise SwiftError(f"deleting {container}/{obj}: {status} {body!r}")
            status, body = self.swift("DELETE", container)
            if status not in (204, 404):
                raise SwiftError(f"deleting bucket {container!r}: {status} {body!r}")
