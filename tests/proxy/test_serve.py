"""`regcache serve` as a real process: readiness, stale temp files, SIGTERM, taken ports, TLS."""

from __future__ import annotations

import os
import socket
import subprocess

import httpx
import pytest

from regcache.proxy.config.control import ControlPlane
from tests.helpers.commands import regcache_executable
from tests.registries.skopeo import assert_pulled


def test_serve_pulls_cleans_stale_temp_files_and_stops_on_sigterm(home, serve, anonymous_registry, push_image,
                                                                  skopeo, tmp_path):
    control = ControlPlane.open(home)
    control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
    control.create_rule("served-app", f"{anonymous_registry.host}/library/served", "served")
    control.close()
    image = push_image(anonymous_registry, "library/served", "1", layers=[100_000])
    tmp = home / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    stale = tmp / f"999999999-deadbeef-sha256-{'0' * 64}"  # a pid that cannot be running
    stale.write_bytes(b"half a blob")

    process = serve()
    assert not stale.exists()
    assert_pulled(skopeo.copy_to_oci(f"{process.host}/served:1", tmp_path / "pulled", "1"), "1", image)
    code, output = process.terminate()
    assert code == 0, output
    assert "SIGTERM: finishing in-flight requests" in output
    assert "Traceback" not in output


def test_serve_refuses_a_taken_port(home, keyring_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([regcache_executable(), "--home", str(home), "serve", "--listen",
                                 f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
                                env={**os.environ, **keyring_env})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is already in use; stop what listens there or choose another "
        f"address with --listen HOST:PORT")
    assert "Traceback" not in result.stderr


def test_serve_with_tls(home, serve, anonymous_registry, push_image, skopeo, tmp_path):
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    certs_dir = tmp_path / "certs.d"
    certs_dir.mkdir()
    ca.cert_pem.write_to_path(certs_dir / "ca.crt")

    control = ControlPlane.open(home)
    control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
    control.create_rule("tls-app", f"{anonymous_registry.host}/library/tls", "tls")
    control.close()
    # a layer of several pieces: cold, the download's pieces go by asyncio's TLS fallback (reads), not sendfile
    image = push_image(anonymous_registry, "library/tls", "1", layers=[10_000, 9 * 1024 * 1024 + 17])

    process = serve("--tls-cert", str(cert_file), "--tls-key", str(key_file))
    assert process.url.startswith("https://")
    response = httpx.get(f"{process.url}/v2/", verify=ssl.create_default_context(cafile=str(certs_dir / "ca.crt")))
    assert response.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{process.url}/v2/")  # not trusted without the CA
    skopeo.run("copy", "--src-cert-dir", str(certs_dir), "--src-no-creds", f"docker://{process.host}/tls:1",
               f"oci:{tmp_path / 'tls-pulled'}:1")
    from tests.registries.skopeo import OciLayout

    assert_pulled(OciLayout(tmp_path / "tls-pulled"), "1", image)
    # warm now: over TLS the file cannot go by the kernel's sendfile, and asyncio's bounded reads send it
    skopeo.run("copy", "--src-cert-dir", str(certs_dir), "--src-no-creds", f"docker://{process.host}/tls:1",
               f"oci:{tmp_path / 'tls-warm'}:1")
    assert_pulled(OciLayout(tmp_path / "tls-warm"), "1", image)
    assert process.terminate()[0] == 0
