"""Run a real nginx (Debian's ``nginx-light``) as a round-robin load balancer in front of regcache nodes.

A :class:`NginxBalancer` owns a temporary directory holding its ``nginx.conf``, its pid and lock
files, its error and access logs and its temp paths (nothing goes to ``/var/log/nginx``, ``/run``
or ``/var/lib/nginx``), and runs ``nginx -p DIR -e DIR/error.log -c DIR/nginx.conf -g 'daemon off;'``
as a child process listening on a free 127.0.0.1 port. The configuration is the one
docs/scale-out.md gives operators: HTTP/1.1 with keepalive to the nodes, no buffering in either
direction (blobs stream), no body size limit, generous read timeouts, ``Host``,
``X-Forwarded-For`` and ``X-Forwarded-Proto`` forwarded.

The access log is one JSON object per request, with ``$upstream_addr``, so a test can count the
requests each node served (:meth:`NginxBalancer.requests_per_backend`).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "apt-get install -y nginx-light"
"""What to run when nginx is missing."""

NGINX_ENV = "REGCACHE_NGINX"
"""Environment variable naming another nginx binary to use."""

_PR_SET_PDEATHSIG = 1

# one JSON object per line: $upstream_addr says which node(s) served the request
_LOG_FORMAT = (
    '{"time":"$time_iso8601","remote":"$remote_addr","method":"$request_method","uri":"$request_uri",'
    '"status":"$status","bytes":"$body_bytes_sent","upstream":"$upstream_addr",'
    '"upstream_status":"$upstream_status","request_time":"$request_time"}'
)


class NginxError(RuntimeError):
    """nginx could not be started or misbehaved."""


def nginx_binary() -> str:
    """Return the nginx binary: ``$REGCACHE_NGINX``, else ``nginx`` on ``PATH`` or in ``/usr/sbin``.

    Raises:
        FileNotFoundError: with the ``apt-get install`` line when it is missing.
    """
    found = os.environ.get(NGINX_ENV) or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if not found or not os.access(found, os.X_OK):
        raise FileNotFoundError(f"nginx is not installed ({found or 'not on PATH'}): run `{INSTALL_HINT}`")
    return found


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have the kernel SIGTERM nginx if pytest dies without tearing down (its workers follow the master)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class AccessEntry:
    """One request line of the balancer's access log."""

    method: str
    uri: str
    status: int
    bytes: int
    upstreams: tuple[str, ...]  # every node tried, in order ("127.0.0.1:PORT"); empty if none
    upstream_status: str
    request_time: float

    @property
    def is_request(self) -> bool:
        """Whether nginx read a request line: clients that try TLS first (skopeo with ``--src-tls-verify=false``)
        send a TLS hello to the plain-HTTP port, which nginx logs as a 400 without method or URI."""
        return bool(self.method)

    @property
    def backend(self) -> str | None:
        """The node that gave the answer (the last one tried), or None."""
        return self.upstreams[-1] if self.upstreams else None

    @classmethod
    def parse(cls, line: str) -> AccessEntry | None:
        try:
            data = json.loads(line)
        except ValueError:
            return None
        # "$upstream_addr" is "A", "A, B" (the next node after a failure) or "A : B" (internal redirect)
        upstreams = tuple(part for part in data["upstream"].replace(" : ", ", ").split(", ")
                          if part and part != "-")
        return cls(method=data["method"], uri=data["uri"], status=int(data["status"]),
                   bytes=int(data["bytes"] or 0), upstreams=upstreams, upstream_status=data["upstream_status"],
                   request_time=float(data["request_time"] or 0))


class NginxBalancer:
    """nginx balancing round robin over ``backends`` (``host:port`` each), on a free 127.0.0.1 port.

    Attributes:
        root: the directory holding ``nginx.conf``, ``nginx.pid``, ``error.log``, ``access.log``, ``tmp/``.
        backends: the nodes, ``host:port`` each.
        port: the port clients use (:attr:`host`, :attr:`url`).
    """

    def __init__(self, root: Path, backends: Sequence[str], *, binary: str | None = None,
                 worker_processes: int = 2, keepalive: int = 32, limit_rate: str | None = None) -> None:
        if not backends:
            raise ValueError("a load balancer needs at least one backend")
        self.root = Path(root)
        self.backends = list(backends)
        self.binary = binary or nginx_binary()
        self.worker_processes = worker_processes
        self.keepalive = keepalive
        #: nginx's ``limit_rate`` for every answer (e.g. ``1m``: 1 MB/s per request), to keep a download running
        #: while a test acts (a throttled upstream front; answers are then buffered, which nginx needs to
        #: throttle them); None: unthrottled and unbuffered
        self.limit_rate = limit_rate
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None

    # -- addresses and paths ----------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def config_path(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def access_log_path(self) -> Path:
        return self.root / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.root / "error.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- configuration ----------------------------------------------------

    def config(self) -> str:
        """The ``nginx.conf`` written to :attr:`config_path`."""
        root = self.root
        # as root the master would hand the workers to "nobody", who cannot enter pytest's 0700 tmp dirs
        user = "user root root;\n" if os.geteuid() == 0 else ""
        servers = "\n".join(f"        server {backend};" for backend in self.backends)
        temp_paths = "\n".join(f"    {kind}_temp_path {root / 'tmp' / kind};"
                               for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return user + textwrap.dedent("""\
            worker_processes {workers};
            pid {root}/nginx.pid;
            lock_file {root}/nginx.lock;
            error_log {root}/error.log notice;

            events {{
                worker_connections 1024;
            }}

            http {{
                log_format balanced escape=json '{log_format}';
                access_log {root}/access.log balanced;
            {temp_paths}

                upstream regcache {{
                    # round robin (the default), its state shared by the workers (zone); a node that
                    # refuses connections is skipped for 10 s and the request goes to the next one
                    zone regcache 64k;
            {servers}
                    keepalive {keepalive};
                    # under uvicorn's 5 s keep-alive: nginx never reuses a connection the node is closing
                    keepalive_timeout 4s;
                }}

                server {{
                    listen 127.0.0.1:{port};
                    client_max_body_size 0;

                    # the OCI distribution API only (a node's /metrics stays off the balancer)
                    location /v2/ {{
                        proxy_pass http://regcache;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Host $http_host;
                        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                        proxy_set_header X-Forwarded-Proto $scheme;
                        proxy_buffering {buffering};
                        proxy_request_buffering off;
                        proxy_connect_timeout 5s;
                        proxy_read_timeout 900s;
                        proxy_send_timeout 900s;
            {limit_rate}
                    }}
                }}
            }}
            """).format(workers=self.worker_processes, root=root, log_format=_LOG_FORMAT, temp_paths=temp_paths,
                        servers=servers, keepalive=self.keepalive, port=self.port,
                        limit_rate=f"            limit_rate {self.limit_rate};" if self.limit_rate else "",
                        # nginx throttles only buffered answers (an unbuffered one goes at the node's pace)
                        buffering="on" if self.limit_rate else "off")

    # -- lifecycle --------------------------------------------------------

    def start(self, timeout: float = 10.0) -> NginxBalancer:
        """Write the config, start nginx and wait until its port accepts connections.

        Moves to another port (twice at most) if the chosen one was taken in the meantime.
        """
        if self.running:
            return self
        for attempt in range(3):
            try:
                self._launch(timeout)
                return self
            except NginxError as error:
                if attempt < 2 and "address already in use" in str(error).lower():
                    self.port = free_port()
                    continue
                raise
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> None:
        (self.root / "tmp").mkdir(exist_ok=True)
        self.config_path.write_text(self.config())
        offset = self.error_log_path.stat().st_size if self.error_log_path.exists() else 0
        with (self.root / "nginx.out").open("ab") as out:
            self._process = subprocess.Popen(
                [self.binary, "-p", f"{self.root}/", "-e", str(self.error_log_path), "-c", str(self.config_path),
                 "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                start_new_session=True,  # its own process group: stop() can end the workers with the master
                preexec_fn=_die_with_parent)
        try:
            self._wait_ready(timeout)
        except NginxError as error:
            self.stop()
            raise NginxError(f"nginx did not start on {self.host} ({error}):\n{self._errors_since(offset)}") from None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise NginxError(f"exited with status {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.02)
        raise NginxError(f"nothing accepts connections on {self.host} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGQUIT: finish the requests in flight), then SIGKILL the process group."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # the workers too, should the master have died without them
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()

    def __enter__(self) -> NginxBalancer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<NginxBalancer {self.url} -> {', '.join(self.backends)} {'running' if self.running else 'stopped'}>"

    def _errors_since(self, offset: int) -> str:
        text = ""
        if self.error_log_path.exists():
            with self.error_log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        out = self.root / "nginx.out"
        if out.exists():
            text += out.read_text(errors="replace")
        return text[-4000:]

    # -- logs -------------------------------------------------------------

    def error_log(self) -> str:
        return self.error_log_path.read_text(errors="replace") if self.error_log_path.exists() else ""

    def access_log(self) -> list[AccessEntry]:
        """Every line nginx logged so far, oldest first (a line is written when the response ended).

        Includes the 400s of TLS hellos sent to the plain-HTTP port (see :attr:`AccessEntry.is_request`).
        """
        if not self.access_log_path.exists():
            return []
        entries = (AccessEntry.parse(line) for line in self.access_log_path.read_text(errors="replace").splitlines())
        return [entry for entry in entries if entry is not None]

    def requests_per_backend(self, *, path_contains: str = "") -> Counter[str]:
        """How many requests each node answered (the node that gave the final answer)."""
        return Counter(entry.backend for entry in self.access_log()
                       if entry.backend is not None and path_contains in entry.uri)
