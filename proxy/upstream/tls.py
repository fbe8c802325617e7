"""TLS trust for connections to upstreams and fleet peers: the system trust store, and an upstream's own CA bundle.

**The system store, by default.** Every upstream certificate is checked against the operating system's
trust store through the ``truststore`` library: on Linux the distribution's CA file and directory (which
``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` replace, as for OpenSSL), on macOS and Windows the platform's
verifier. A CA an organisation installed system-wide (``update-ca-certificates``) is trusted without
configuring regcache. If truststore cannot be used (a Python or OpenSSL it does not support), regcache
falls back to certifi's bundle (or ``SSL_CERT_FILE``/``SSL_CERT_DIR``) and logs a warning once.

**A CA bundle per upstream.** ``regcache upstream add ... --ca-bundle PATH`` names a PEM file of CA
certificates trusted *in addition to* the system store, for that upstream's own origin only (scheme, host,
port of its URL): its redirects, token services and CDNs on other origins, even allowed ones, are checked
against the system store alone, so a private CA vouches for nothing but the registry it was given for (it
cannot impersonate a token service that receives the credential set). The file is read when the upstream is
added (refused unless it is a readable regular file within ``ca-bundle-max-size`` holding at least one
certificate) and again whenever the proxy reloads its configuration; the state database keeps only its path.

**Fleet peers.** A node serving https verifies its fleet peers against the ``fleet-ca`` setting's file alone
(:func:`peer_context`), checked like a CA bundle, or against the system store when it is unset.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import stat
from dataclasses import dataclass

from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.pem import pem_certificates
from regcache.proxy.core.settings import CA_BUNDLE_MAX_SIZE_SETTING
from regcache.proxy.core.units import format_size

log = logging.getLogger("regcache.upstream")

_warned_fallback = False


def system_context() -> ssl.SSLContext:
    """A new client context trusting the operating system's store (truststore), else certifi's bundle."""
    global _warned_fallback
    try:
        import truststore

        return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    except Exception as exc:  # ImportError on an unsupported Python, ssl errors on an unsupported OpenSSL
        if not _warned_fallback:
            _warned_fallback = True
            log.warning("the operating system's trust store cannot be used (truststore: %s: %s); upstream "
                        "certificates are checked against certifi's CA bundle (or SSL_CERT_FILE/SSL_CERT_DIR) "
                        "instead, so a CA installed only system-wide is not trusted: give it to the upstream with "
                        "`regcache upstream add ... --ca-bundle PATH`", type(exc).__name__, exc)
        import httpx  # here: the CLI's control plane imports this module, and its commands need no HTTP client

        return httpx.create_ssl_context()


@dataclass(frozen=True, slots=True)
class CaBundle:
    """A CA bundle file as last read: its path, its certificates (DER) and their fingerprint."""

    path: str
    certificates: tuple[bytes, ...]

    @property
    def fingerprint(self) -> str:
        """sha256 of the certificates: two paths with the same certificates share one client."""
        return hashlib.sha256(b"".join(self.certificates)).hexdigest()


def _unreadable(path: str, problem: str) -> ValidationError:
    return ValidationError(f"CA bundle {path} {problem}", field="ca_bundle")


def read_ca_bundle(path: str, max_bytes: int) -> CaBundle:
    """Read and check the CA bundle at ``path`` (blocking: run it in a worker thread).

    Refused (a ValidationError naming the path and why): a missing or unreadable file, anything but a
    regular file (a FIFO is never waited on, a device never read), more than ``max_bytes``, and bytes that
    are not PEM certificates OpenSSL accepts.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below refuses it anyway
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _unreadable(path, "does not exist") from None
    except PermissionError:
        raise _unreadable(path, "cannot be read by this user (permission denied)") from None
    except OSError as exc:
        raise _unreadable(path, f"cannot be opened ({exc.strerror or type(exc).__name__})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise _unreadable(path, f"is {kind}; give a PEM file of CA certificates")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise _unreadable(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise _unreadable(path, f"is larger than {format_size(max_bytes)}, the limit of the setting "
                                f"{CA_BUNDLE_MAX_SIZE_SETTING} (raise it with `regcache settings set "
                                f"{CA_BUNDLE_MAX_SIZE_SETTING} SIZE` if the file is meant to be this large)")
    bundle = CaBundle(path, pem_certificates(data, f"CA bundle {path}"))
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=b"".join(bundle.certificates))
    except ssl.SSLError as exc:
        raise _unreadable(path, f"holds a block OpenSSL does not accept as an X.509 certificate "
                                f"({exc.reason or 'unknown reason'})") from None
    return bundle


def bundle_context(bundle: CaBundle) -> ssl.SSLContext:
    """A new client context trusting ``bundle``'s certificates besides the operating system's store."""
    context = system_context()
    context.load_verify_locations(cadata=b"".join(bundle.certificates))
    return context


def peer_context(bundle: CaBundle | None) -> ssl.SSLContext:
    """A client context for the fleet's peer requests: the ``fleet-ca`` bundle's certificates alone (a public
    CA does not vouch for a fleet member), or the operating system's store when no fleet CA is set."""
    if bundle is None:
        return system_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    context.load_verify_locations(cadata=b"".join(bundle.certificates))
    return context


def tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an httpx/httpcore connection error, if one is (an ``ssl.SSLCertVerificationError``
    when the certificate was not trusted); None for any other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
