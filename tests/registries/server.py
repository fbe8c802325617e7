"""Run a real CNCF distribution registry (Debian's ``docker-registry``) for tests.

A :class:`RegistryServer` owns a temporary directory holding its
``config.yml``, its filesystem storage and its log file, and a fixed
127.0.0.1 port, so it can be stopped and started again (an upstream outage)
without losing content.  Its access log (Apache combined format, which
registry 2.8 prints for every request when ``log.accesslog.disabled`` is
false) is parsed into :class:`AccessLogEntry` records so tests can count the
requests the upstream really served.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import bcrypt

if TYPE_CHECKING:
    from tests.registries.tokens import TokenIssuer

INSTALL_HINT = "apt-get install -y docker-registry skopeo"
"""What to run when the registry or skopeo binaries are missing."""

REGISTRY_ENV = "REGCACHE_DOCKER_REGISTRY"
"""Environment variable naming another registry binary to use."""

AuthKind = Literal["anonymous", "htpasswd", "token"]

_SYNC_PREFIX = "/regcache-log-sync/"
_BLOB_PATH = re.compile(r"^/v2/(?P<repository>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$")
_MANIFEST_PATH = re.compile(r"^/v2/(?P<repository>.+)/manifests/(?P<reference>[^/]+)$")
# 127.0.0.1 - - [27/Nov/2026:01:41:06 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_COMBINED_LINE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) (?P<protocol>[^"]+)" '
    r'(?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)"$'
)


class RegistryError(RuntimeError):
    """The registry process could not be started or misbehaved."""


def registry_binary() -> str:
    """Return the registry binary: ``$REGCACHE_DOCKER_REGISTRY``, else ``docker-registry``.

    Raises:
        FileNotFoundError: with an install hint when it is missing.
    """
    found = (
        os.environ.get(REGISTRY_ENV)
        or shutil.which("docker-registry")
        or shutil.which("docker-registry", path="/usr/bin")
    )
    if not found or not os.access(found, os.X_OK):
        raise FileNotFoundError(
            f"the CNCF distribution registry (docker-registry) is not installed "
            f"({found or 'not on PATH'}): run `{INSTALL_HINT}`"
        )
    return found


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def htpasswd_line(username: str, password: str) -> str:
    """Return one htpasswd entry with a bcrypt hash (cost 4: fast, accepted by Go)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}"


@dataclass(frozen=True)
class AccessLogEntry:
    """One request line of the registry's access log (Apache combined format)."""

    method: str
    uri: str
    status: int
    size: int
    user_agent: str
    line: str

    @property
    def path(self) -> str:
        """The request path, without the query string."""
        return self.uri.split("?", 1)[0]

    @property
    def blob(self) -> tuple[str, str] | None:
        """``(repository, digest)`` when this is a ``/v2/<name>/blobs/<digest>`` request."""
        match = _BLOB_PATH.match(self.path)
        return (match["repository"], match["digest"]) if match else None

    @property
    def manifest(self) -> tuple[str, str] | None:
        """``(repository, reference)`` when this is a ``/v2/<name>/manifests/<ref>`` request."""
        match = _MANIFEST_PATH.match(self.path)
        return (match["repository"], match["reference"]) if match else None

    @classmethod
    def parse(cls, line: str) -> AccessLogEntry | None:
        """Parse a combined-format line; ``None`` for any other log line."""
        match = _COMBINED_LINE.match(line.strip())
        if match is None:
            return None
        size = match["size"]
        return cls(
            method=match["method"],
            uri=match["uri"],
            status=int(match["status"]),
            size=0 if size == "-" else int(size),
            user_agent=match["user_agent"],
            line=line.rstrip("\n"),
        )


class RegistryServer:
    """A ``docker-registry serve`` subprocess on a fixed 127.0.0.1 port.

    Build one with :meth:`anonymous`, :meth:`htpasswd` or :meth:`token`, then
    :meth:`start` it (stop/start may be repeated: port and storage are kept).

    Attributes:
        root: the directory holding ``config.yml``, ``storage/`` and ``registry.log``.
        port: the TCP port, chosen free when the server is created.
        auth: ``"anonymous"``, ``"htpasswd"`` or ``"token"``.
        username, password: the credentials that may push and pull (None when anonymous).
        issuer: the :class:`~tests.registries.tokens.TokenIssuer` of a token registry.
    """

    def __init__(
        self,
        root: Path,
        *,
        auth: AuthKind = "anonymous",
        username: str | None = None,
        password: str | None = None,
        issuer: TokenIssuer | None = None,
        binary: str | None = None,
    ) -> None:
        if auth == "htpasswd" and (username is None or password is None):
            raise ValueError("an htpasswd registry needs a username and a password")
        if auth == "token" and issuer is None:
            raise ValueError("a token registry needs a TokenIssuer")
        self.root = Path(root)
        self.auth: AuthKind = auth
        self.username = username
        self.password = password
        self.issuer = issuer
        self.binary = binary or registry_binary()
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secrets.token_hex(16)
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- construction -----------------------------------------------------

    @classmethod
    def anonymous(cls, root: Path, *, binary: str | None = None) -> RegistryServer:
        """A registry without authentication."""
        return cls(root, binary=binary)

    @classmethod
    def htpasswd(
        cls, root: Path, username: str, password: str, *, binary: str | None = None
    ) -> RegistryServer:
        """A registry behind HTTP Basic auth checked against a bcrypt htpasswd file."""
        return cls(root, auth="htpasswd", username=username, password=password, binary=binary)

    @classmethod
    def token(cls, root: Path, issuer: TokenIssuer, *, binary: str | None = None) -> RegistryServer:
        """A registry delegating auth to ``issuer`` (Docker token auth, ES256 JWTs)."""
        return cls(
            root,
            auth="token",
            username=issuer.username,
            password=issuer.password,
            issuer=issuer,
            binary=binary,
        )

    # -- addresses --------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` for authenticated registries, else None."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def config_path(self) -> Path:
        """The generated ``config.yml``."""
        return self.root / "config.yml"

    @property
    def storage_path(self) -> Path:
        """The filesystem storage root."""
        return self.root / "storage"

    @property
    def log_path(self) -> Path:
        """The file receiving the registry's stdout (access log) and stderr (app log)."""
        return self.root / "registry.log"

    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle --------------------------------------------------------

    def config(self) -> dict[str, object]:
        """The registry configuration, as written (JSON is valid YAML) to ``config.yml``."""
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_path)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": self._secret},
        }
        if self.auth == "htpasswd":
            assert self.username is not None and self.password is not None
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(htpasswd_line(self.username, self.password) + "\n")
            config["auth"] = {"htpasswd": {"realm": "regcache-tests", "path": str(htpasswd)}}
        elif self.auth == "token":
            assert self.issuer is not None
            bundle = self.root / "token-ca.pem"
            bundle.write_bytes(self.issuer.certificate_pem)
            config["auth"] = {
                "token": {
                    "realm": self.issuer.realm,
                    "service": self.issuer.service,
                    "issuer": self.issuer.issuer,
                    "rootcertbundle": str(bundle),
                }
            }
        return config

    def start(self, timeout: float = 10.0) -> RegistryServer:
        """Start the registry and wait until ``GET /v2/`` answers 200 or 401.

        The first start moves to a new port if the chosen one was taken in
        the meantime; later starts reuse the port (clients keep their URL).
        """
        if self.running:
            return self
        retries = 0 if self._started_once else 2
        while True:
            try:
                self._launch(timeout)
            except RegistryError as error:
                if retries and "address already in use" in str(error):
                    retries -= 1
                    self.port = free_port()
                    continue
                raise
            self._started_once = True
            return self

    def _launch(self, timeout: float) -> None:
        """Write the config, spawn the process and wait for it; raise with its output on failure."""
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:  # append mode: clear_log() may truncate safely
            self._process = subprocess.Popen(
                [self.binary, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        try:
            self._wait_ready(timeout)
        except RegistryError as error:
            self.stop()
            raise RegistryError(
                f"docker-registry did not start on {self.host} ({error}):\n{self._log_since(offset)}"
            ) from None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the registry: SIGTERM, wait, then SIGKILL. Storage and port are kept."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> RegistryServer:
        """Stop then start again on the same port and storage."""
        self.stop()
        return self.start()

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RegistryServer {self.auth} {self.url} {state}>"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RegistryError(f"exited with status {self._process.returncode}")
            try:
                if self._get_status("/v2/") in (200, 401):
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.01)
        raise RegistryError(f"no answer on {self.url}/v2/ within {timeout}s")

    def _connection(self) -> http.client.HTTPConnection:
        """A bare connection to the registry (cheaper than an httpx client)."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)

    def _get_status(self, path: str) -> int:
        """``GET path``: its status."""
        connection = self._connection()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    # -- logs -------------------------------------------------------------

    def log_lines(self) -> list[str]:
        """Every line the registry printed so far (all runs), app log and access log."""
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()

    def clear_log(self) -> None:
        """Empty the log file (safe while running: the registry writes in append mode)."""
        self.sync_log()
        self.log_path.write_bytes(b"")

    def sync_log(self) -> None:
        """Make sure the access lines of already-answered requests are in the file.

        The registry writes an access line just *after* sending the response,
        so a client may finish before its line lands.  This sends a marker
        request and waits for its own line (the marker is hidden from
        :meth:`access_log`).  No-op while stopped.
        """
        if not self.running:
            return
        marker = f"{_SYNC_PREFIX}{uuid.uuid4().hex}"
        self._get_status(marker)
        deadline = time.monotonic() + 2.0
        while marker not in self.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RegistryError(f"access log line for {marker} never appeared")
            time.sleep(0.005)

    def access_log(self, *, sync: bool = True) -> list[AccessLogEntry]:
        """The parsed access-log entries, oldest first (``sync``: see :meth:`sync_log`)."""
        if sync:
            self.sync_log()
        entries = (AccessLogEntry.parse(line) for line in self.log_lines())
        return [e for e in entries if e is not None and not e.path.startswith(_SYNC_PREFIX)]

    def requests(
        self, method: str | None = None, *, path_prefix: str = "", status: int | None = None
    ) -> list[AccessLogEntry]:
        """Access-log entries filtered by method, path prefix and status."""
        return [
            e
            for e in self.access_log()
            if (method is None or e.method == method)
            and e.path.startswith(path_prefix)
            and (status is None or e.status == status)
        ]

    def blob_gets(
        self, repository: str | None = None, digest: str | None = None, *, status: int | None = 200
    ) -> list[AccessLogEntry]:
        """``GET /v2/<repository>/blobs/<digest>`` entries (default: successful ones only)."""
        found = []
        for entry in self.requests("GET", status=status):
            blob = entry.blob
            if blob is None:
                continue
            if (repository is None or blob[0] == repository) and (digest is None or blob[1] == digest):
                found.append(entry)
        return found

    def count_blob_gets(
        self, repository: str | None = None, digest: str | None = None, *, status: int | None = 200
    ) -> int:
        """How many blob GETs the registry served (see :meth:`blob_gets`)."""
        return len(self.blob_gets(repository, digest, status=status))
