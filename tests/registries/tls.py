"""A test CA (trustme) and a real docker-registry serving https with a certificate it signed.

:class:`PrivateCa` writes the CA's certificate (the file an operator passes with ``--ca-bundle``) and issues
server certificates for 127.0.0.1; :class:`TlsRegistryServer` is a :class:`~tests.registries.server.RegistryServer`
whose ``config.yml`` sets ``http.tls`` (the distribution registry serves TLS itself), reached as
``https://127.0.0.1:PORT``.
"""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from typing import Any

import trustme

from tests.registries.server import RegistryServer


class PrivateCa:
    """A CA no system store trusts; ``bundle`` is its certificate as a PEM file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.bundle = self.root / "ca.pem"
        self.ca.cert_pem.write_to_path(self.bundle)

    def issue(self, name: str, *hosts: str) -> tuple[Path, Path]:
        """A certificate (chain) and key for ``hosts`` (default 127.0.0.1), written as ``name``-cert/-key.pem."""
        cert = self.ca.issue_cert(*(hosts or ("127.0.0.1",)))
        cert_file, key_file = self.root / f"{name}-cert.pem", self.root / f"{name}-key.pem"
        cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(key_file)
        return cert_file, key_file

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting this CA only."""
        return ssl.create_default_context(cafile=str(self.bundle))


class TlsRegistryServer(RegistryServer):
    """A docker-registry on https://127.0.0.1:PORT with a certificate ``ca`` signed."""

    def __init__(self, root: Path, ca: PrivateCa, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.ca = ca
        self.cert_file, self.key_file = ca.issue(f"registry-{self.port}")

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def config(self) -> dict[str, object]:
        config = super().config()
        http_config = config["http"]
        assert isinstance(http_config, dict)
        http_config["tls"] = {"certificate": str(self.cert_file), "key": str(self.key_file)}
        return config

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2.0, context=self.ca.client_context())
