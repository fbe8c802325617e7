"""A tiny Docker token-auth server ("realm") for token-protected test registries.

:class:`TokenIssuer` runs an HTTP server in a thread on a free 127.0.0.1 port
and implements the Docker registry token endpoint:

* ``GET /token?service=S&scope=repository:NAME:pull,push`` with or without
  HTTP Basic credentials;
* ``POST /token`` with the OAuth2 password grant (form ``grant_type=password``,
  ``username``, ``password``, ``service``, ``scope``).

Anonymous requests are granted ``pull`` on every repository when
``allow_anonymous`` is true and refused (401) otherwise; the configured user
is granted every action it asks for; wrong credentials get 401.  Tokens are
ES256 JWTs signed by a freshly generated self-signed certificate, which is
both the registry's ``rootcertbundle`` and the JWT header's ``x5c``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

ANONYMOUS_ACTIONS = frozenset({"pull"})
"""What an anonymous client may do, when anonymous access is allowed."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Scope:
    """One requested or granted access scope, e.g. ``repository:library/ubuntu:pull``."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse ``type:name:action,action`` (the name may itself contain ``:``)."""
        type_, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not type_ or not name:
            raise ValueError(f"malformed scope {text!r}")
        return cls(type_, name, tuple(a for a in actions.split(",") if a))

    def claim(self) -> dict[str, object]:
        """The JWT ``access`` entry for this scope."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


@dataclass(frozen=True)
class TokenRequest:
    """A request the issuer answered (kept in :attr:`TokenIssuer.requests`)."""

    method: str
    service: str | None
    scopes: tuple[Scope, ...]
    username: str | None
    """The Basic/OAuth2 user, or None for an anonymous request."""
    status: int
    granted: tuple[Scope, ...] = ()


@dataclass
class SigningKey:
    """An EC P-256 key with a self-signed certificate, used to sign ES256 JWTs."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, common_name: str = "regcache test token issuer") -> SigningKey:
        """Generate a key and a certificate valid from an hour ago for a week."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def certificate_pem(self) -> bytes:
        """The certificate in PEM, for the registry's ``rootcertbundle``."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign_jwt(self, claims: dict[str, object]) -> str:
        """Return a compact ES256 JWS of ``claims`` whose header carries ``x5c``."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        r, s = decode_dss_signature(self.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


@dataclass(eq=False)
class TokenIssuer:
    """A Docker token server on ``http://127.0.0.1:PORT/token`` (see module doc).

    Attributes may be changed while it runs (e.g. ``allow_anonymous``).
    Start it before the registry that trusts it: the registry's config
    needs :attr:`realm` and :attr:`certificate_pem`.
    """

    username: str = "tester"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    service: str = "regcache-test-registry"
    issuer: str = "regcache-test-issuer"
    allow_anonymous: bool = True
    expires_in: int = 300
    key: SigningKey = field(default_factory=SigningKey.generate, repr=False)
    requests: list[TokenRequest] = field(default_factory=list, init=False, repr=False)
    port: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- addresses --------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        """The token endpoint, for the registry's ``auth.token.realm``."""
        return f"{self.url}/token"

    @property
    def certificate_pem(self) -> bytes:
        """The signing certificate, for the registry's ``auth.token.rootcertbundle``."""
        return self.key.certificate_pem

    @property
    def running(self) -> bool:
        """Whether the HTTP server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    # -- bookkeeping ------------------------------------------------------

    @property
    def request_count(self) -> int:
        """How many token requests were answered (any status)."""
        with self._lock:
            return len(self.requests)

    def issued(self) -> list[TokenRequest]:
        """The requests that got a token (status 200)."""
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def reset_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- tokens -----------------------------------------------------------

    def grant(self, username: str | None, scopes: Iterable[Scope]) -> tuple[Scope, ...]:
        """What ``username`` (None: anonymous) is granted of ``scopes``."""
        granted = []
        for scope in scopes:
            actions = (
                scope.actions
                if username is not None
                else tuple(a for a in scope.actions if a in ANONYMOUS_ACTIONS)
            )
            if actions:
                granted.append(Scope(scope.type, scope.name, actions))
        return tuple(granted)

    def issue(self, access: Iterable[Scope], subject: str = "") -> str:
        """Sign a token granting ``access`` (usable directly by tests)."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [scope.claim() for scope in access],
        }
        return self.key.sign_jwt(claims)

    def token_response(self, access: Iterable[Scope], subject: str = "") -> dict[str, object]:
        """The JSON body of a successful token response."""
        token = self.issue(access, subject)
        issued_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued_at.replace("+00:00", "Z"),
        }

    def check_password(self, username: str, password: str) -> bool:
        """Whether ``username``/``password`` are the configured credentials."""
        return secrets.compare_digest(username, self.username) and secrets.compare_digest(
            password, self.password
        )

    # -- lifecycle --------------------------------------------------------

    def start(self) -> TokenIssuer:
        """Serve in a daemon thread (on a new free port the first time, the same port after)."""
        if self.running:
            return self
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"token-issuer-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (the port is kept for :meth:`start`)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _handler_for(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    """Build the request handler class bound to ``issuer``."""

    class TokenHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Silence the default stderr logging (requests are recorded instead)."""

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._send(404, {"details": "not found"})
                return
            query = parse_qs(url.query)
            username, password = self._basic_credentials()
            self._answer("GET", query, username, password)

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/token":
                self._send(404, {"details": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            if form.get("grant_type", [""])[0] != "password":
                self._send(400, {"error": "unsupported_grant_type"})
                return
            username = form.get("username", [None])[0]
            password = form.get("password", [""])[0]
            self._answer("POST", form, username, password)

        def _answer(
            self, method: str, params: dict[str, list[str]], username: str | None, password: str
        ) -> None:
            service = params.get("service", [None])[0]
            try:
                scopes = tuple(Scope.parse(s) for value in params.get("scope", []) for s in value.split())
            except ValueError as error:
                self._reply(method, service, (), username, 400, {"details": str(error)})
                return
            if service != issuer.service:
                details = f"unknown service {service!r}, expected {issuer.service!r}"
                self._reply(method, service, scopes, username, 400, {"details": details})
                return
            if username is None and not issuer.allow_anonymous:
                self._reply(method, service, scopes, None, 401, {"details": "authentication required"})
                return
            if username is not None and not issuer.check_password(username, password):
                self._reply(method, service, scopes, username, 401, {"details": "invalid credentials"})
                return
            granted = issuer.grant(username, scopes)
            body = issuer.token_response(granted, subject=username or "")
            self._reply(method, service, scopes, username, 200, body, granted)

        def _reply(
            self,
            method: str,
            service: str | None,
            scopes: tuple[Scope, ...],
            username: str | None,
            status: int,
            body: dict[str, object],
            granted: tuple[Scope, ...] = (),
        ) -> None:
            issuer._record(TokenRequest(method, service, scopes, username, status, granted))
            self._send(status, body)

        def _basic_credentials(self) -> tuple[str | None, str]:
            header = self.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                return None, ""
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return "", ""  # present but unreadable: treated as wrong credentials
            username, _, password = decoded.partition(":")
            return username, password

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="regcache-test-issuer"')
            self.end_headers()
            self.wfile.write(data)

    return TokenHandler
