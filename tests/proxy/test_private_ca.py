"""Upstreams with a private CA: the operating system's trust store by default, and a CA bundle per upstream.

The integration tests run a real docker-registry serving https with a certificate a trustme CA signed (no
system store trusts it) and pull through the real proxy with skopeo; the own-origin rule is shown with the
hostile upstream over https, redirecting to a second https origin. The validation of a bundle file is tested
on real files (a FIFO, a directory, 2 MiB of certificates, a key file, DER, text).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import trustme

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.config.declarative import apply_document, export_document, plan_document
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.models import AuthPolicy, Upstream
from regcache.proxy.core.oci import OCI_MANIFEST
from regcache.proxy.core.pem import pem_certificates
from regcache.proxy.core.settings import CA_BUNDLE_MAX_SIZE_SETTING
from regcache.proxy.upstream import tls
from regcache.proxy.upstream.client import UpstreamClient, UpstreamUnreachable
from tests.helpers.cli import cli, ok
from tests.helpers.hostile_upstream import HostileUpstream
from tests.helpers.manifests import MANIFEST
from tests.proxy.conftest import start_regcache
from tests.registries.skopeo import SkopeoError, assert_pulled
from tests.registries.tls import PrivateCa, TlsRegistryServer

# -- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
def no_trust_from_the_environment(monkeypatch):
    """The CA is trusted only where a test puts it: no SSL_CERT_FILE/DIR left over from the environment."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.fixture
def private_ca(tmp_path: Path) -> PrivateCa:
    return PrivateCa(tmp_path / "ca")


@pytest.fixture
def tls_registry(tmp_path_factory, private_ca):
    server = TlsRegistryServer(tmp_path_factory.mktemp("registry-tls"), private_ca).start()
    yield server
    server.stop()


@pytest.fixture
def tls_hostile(private_ca):
    """The hostile upstream over https, its certificate signed by the private CA."""
    upstream = HostileUpstream(tls=tuple(map(str, private_ca.issue("hostile")))).start()
    yield upstream
    upstream.stop()


def _error(response: httpx.Response) -> tuple[int, str]:
    """The status and OCI error message of a refused request."""
    errors = response.json()["errors"]
    assert len(errors) == 1 and {"code", "message"} <= set(errors[0]), response.text
    return response.status_code, errors[0]["message"]


def _reload(regcache) -> None:
    """Any configuration change (another connection's commit) makes the proxy reload at its next request."""
    count = int(regcache.control.settings()["events-max-count"] or 1_000_000)
    regcache.control.set_setting("events-max-count", str(count - 1))  # a value that changes: sqlite sees a change


# -- pulls through a registry signed by a private CA -----------------------------------------------------

def test_a_private_ca_registry_is_refused_clearly_without_its_bundle_and_pulled_byte_for_byte_with_it(
        regcache, tls_registry, private_ca, push_image, skopeo, tmp_path, taken_bodies):
    server = tls_registry.host
    regcache.control.add_upstream(server, tls_registry.url, "anonymous")
    regcache.control.create_rule("private", f"{server}/team/*", "team/*")
    image = push_image(tls_registry, "team/app", "1.0", layers=[300_000, 5_000])

    with pytest.raises(SkopeoError) as refused:
        skopeo.copy_to_oci(f"{regcache.host}/team/app:1.0", tmp_path / "refused", "1.0")
    assert "503 Service Unavailable" in refused.value.stderr  # skopeo does not print a 5xx's body: the log does
    with regcache.http() as http:
        status, message = _error(http.get("/v2/team/app/manifests/1.0"))
    assert status == 503 and message.startswith(f"upstream {server}: the TLS certificate of {server} is not trusted "
                                                 f"(unable to get local issuer certificate); if a private CA signed "
                                                 f"it, pass that CA's certificate (a PEM file) with --ca-bundle")
    # the command to run keeps what the upstream has (add replaces it all)
    assert f"`regcache upstream add --login-server {server} --url {tls_registry.url} --auth anonymous " \
           f"--ca-bundle CA.pem`" in message
    assert [e["detail"] for e in regcache.events() if e["result"] == "error"] == [message, message]
    assert not (regcache.home / "blobs").exists() or regcache.blob_files() == []

    added = json.loads(ok("upstream", "add", "--login-server", server, "--url", tls_registry.url, "--auth",
                          "anonymous", "--ca-bundle", str(private_ca.bundle), "-o", "json").stdout)
    assert added["caBundle"] == str(private_ca.bundle)
    layout = skopeo.copy_to_oci(f"{regcache.host}/team/app:1.0", tmp_path / "pulled", "1.0")
    assert_pulled(layout, "1.0", image)
    # received, decrypted, hashed and written on each connection's own thread
    assert all(taken_bodies.taken[layer.digest] for layer in image.layers)
    by_digest = skopeo.copy_to_oci(f"{regcache.host}/team/app@{image.digest}", tmp_path / "by-digest", "1.0")
    assert_pulled(by_digest, "1.0", image)


def test_a_bundle_is_read_again_at_every_reload_and_a_vanished_or_wrong_one_is_a_clear_503(
        regcache, tls_registry, private_ca, push_image, tmp_path):
    server = tls_registry.host
    bundle = tmp_path / "bundle.pem"
    shutil.copy(private_ca.bundle, bundle)
    regcache.control.add_upstream(server, tls_registry.url, "anonymous", ca_bundle=str(bundle))
    regcache.control.create_rule("private", f"{server}/team/*", "team/*")
    for tag in ("1", "2", "3", "4"):
        push_image(tls_registry, "team/app", tag, layers=[1_000])
    with regcache.http() as http:
        assert http.get("/v2/team/app/manifests/1").status_code == 200

        bundle.unlink()
        _reload(regcache)
        status, message = _error(http.get("/v2/team/app/manifests/2"))
        assert status == 503 and f"upstream {server}: cannot verify TLS: CA bundle {bundle} does not exist" in message
        assert f"--ca-bundle {bundle}` again to reload it" in message

        bundle.write_bytes(trustme.CA().cert_pem.bytes())  # another CA: a bundle that no longer signs it
        _reload(regcache)
        status, message = _error(http.get("/v2/team/app/manifests/3"))
        assert status == 503 and f"neither its CA bundle {bundle} nor the operating system's trust store" in message

        shutil.copy(private_ca.bundle, bundle)  # fixed: the next reload picks it up
        _reload(regcache)
        assert http.get("/v2/team/app/manifests/4").status_code == 200
        # a tag cached before is served stale while the bundle is unusable, as when the upstream is down
        bundle.write_bytes(b"not a certificate\n")
        _reload(regcache)
        assert http.get("/v2/team/app/manifests/1").status_code == 200


@pytest.mark.parametrize("where", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_the_system_trust_store_is_used_by_default(regcache, tls_registry, private_ca, push_image, skopeo,
                                                   tmp_path, monkeypatch, where):
    """truststore honours SSL_CERT_FILE and SSL_CERT_DIR on Linux (as OpenSSL does): a CA put there is trusted
    without any CA bundle, and the client's context is truststore's."""
    import truststore

    server = tls_registry.host
    regcache.control.add_upstream(server, tls_registry.url, "anonymous")
    regcache.control.create_rule("private", f"{server}/team/*", "team/*")
    image = push_image(tls_registry, "team/app", "1.0", layers=[100_000])
    upstream = regcache.server.app.state.registry.cache.upstream
    assert isinstance(upstream.ssl_context, truststore.SSLContext)
    with regcache.http() as http:
        assert _error(http.get("/v2/team/app/manifests/1.0"))[0] == 503  # not in the store yet

    if where == "SSL_CERT_FILE":
        monkeypatch.setenv("SSL_CERT_FILE", str(private_ca.bundle))
    else:  # a hashed certificate directory, as update-ca-certificates and c_rehash write it
        subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(private_ca.bundle)],
                                      capture_output=True, text=True, check=True).stdout.strip()
        directory = tmp_path / "certs"
        directory.mkdir()
        shutil.copy(private_ca.bundle, directory / f"{subject_hash}.0")
        monkeypatch.setenv("SSL_CERT_DIR", str(directory))
    assert_pulled(skopeo.copy_to_oci(f"{regcache.host}/team/app:1.0", tmp_path / "pulled", "1.0"), "1.0", image)


def test_without_truststore_the_client_falls_back_to_certifi_with_a_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "truststore", None)  # what an unsupported platform's import does: fail
    monkeypatch.setattr(tls, "_warned_fallback", False)
    with caplog.at_level(logging.WARNING, logger="regcache.upstream"):
        context = tls.system_context()
        tls.system_context()
    assert type(context) is ssl.SSLContext and context.verify_mode is ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) > 10  # certifi's bundle
    warnings = [r.getMessage() for r in caplog.records if "trust store cannot be used" in r.getMessage()]
    assert len(warnings) == 1 and "--ca-bundle" in warnings[0]


# -- the bundle covers the upstream's own origin only ----------------------------------------------------

def test_a_bundle_covers_the_upstreams_own_origin_only(home, keyring_env, private_ca, tls_hostile, monkeypatch):
    """A redirect to another origin signed by the same private CA, even an allowed one, is verified against the
    system store alone: the CA vouches for the registry it was given for, not for what that registry names."""
    other = HostileUpstream(tls=tuple(map(str, private_ca.issue("other")))).start()
    regcache = start_regcache(home)
    try:
        tls_hostile.manifests[("evil/own", "1")] = (OCI_MANIFEST, MANIFEST)
        other.manifests[("evil/app", "1")] = (OCI_MANIFEST, MANIFEST)
        tls_hostile.redirects["evil/app"] = f"{other.url}/v2/evil/app/manifests/1"
        regcache.control.add_upstream(tls_hostile.host, tls_hostile.url, "both", [other.url],
                                      str(private_ca.bundle))
        regcache.control.create_rule("evil-rule", f"{tls_hostile.host}/evil/*", "evil/*")
        with regcache.http() as http:
            assert http.get("/v2/evil/own/manifests/1").status_code == 200  # its own origin: the bundle
            status, message = _error(http.get("/v2/evil/app/manifests/1"))
            assert status == 503 and f"the TLS certificate of {other.host} is not trusted" in message
            assert "not the upstream's own origin, so only the operating system's trust store is used" in message
            assert other.requests == []  # the handshake failed: no request reached it
            monkeypatch.setenv("SSL_CERT_FILE", str(private_ca.bundle))  # in the system store it is trusted
            assert http.get("/v2/evil/app/manifests/1").status_code == 200
    finally:
        regcache.proxy.stop()
        regcache.control.close()
        other.stop()


# -- clients: one per distinct bundle, cached, closed --------------------------------------------------

@pytest.mark.anyio
async def test_one_client_per_distinct_bundle_replaced_when_it_changes_and_closed_on_aclose(private_ca, tmp_path):
    same = tmp_path / "same.pem"
    shutil.copy(private_ca.bundle, same)
    upstreams = [Upstream(f"r{i}.example", f"https://r{i}.example", AuthPolicy.BOTH, ca_bundle=str(path))
                 for i, path in enumerate((private_ca.bundle, same))]
    plain = Upstream("plain.example", "https://plain.example", AuthPolicy.BOTH)
    client = UpstreamClient()
    try:
        await client.reload_ca_bundles([*upstreams, plain])
        first = await client._own_origin_client(upstreams[0])
        assert await client._own_origin_client(upstreams[1]) is first  # same certificates: one client
        assert await client._own_origin_client(plain) is client._client  # no bundle: the system store's
        assert first is not client._client
        # the public-addresses-only pool (redirects elsewhere) verifies against the system store, never a bundle
        assert client._public._transport._pool._ssl_context is client.ssl_context
        # blob answers go through twins that receive on threads of their own, with the same trust each
        bulk = await client._own_origin_client(upstreams[0], bulk=True)
        assert bulk is not first and await client._own_origin_client(upstreams[1], bulk=True) is bulk
        assert bulk._transport._pool._ssl_context is not client.ssl_context  # the bundle's trust, not the system's
        assert await client._own_origin_client(plain, bulk=True) is client._bulk
        assert client._bulk._transport._pool._ssl_context is client.ssl_context
        assert client._public_bulk._transport._pool._ssl_context is client.ssl_context
        await client.reload_ca_bundles([*upstreams, plain])
        assert await client._own_origin_client(upstreams[0]) is first  # unchanged: kept

        same.write_bytes(trustme.CA().cert_pem.bytes())
        await client.reload_ca_bundles([*upstreams, plain])
        changed = await client._own_origin_client(upstreams[1])
        assert changed is not first and await client._own_origin_client(upstreams[0]) is first

        await client.reload_ca_bundles([plain])  # no upstream names a bundle any more: retired, still open
        assert not first.is_closed and not changed.is_closed
    finally:
        await client.aclose()
    assert first.is_closed and changed.is_closed and client._client.is_closed
    assert bulk.is_closed and client._bulk.is_closed and client._public_bulk.is_closed


@pytest.mark.anyio
async def test_a_bundle_never_read_is_read_on_first_use_and_an_unusable_one_names_upstream_and_path(tmp_path):
    missing = tmp_path / "gone.pem"
    upstream = Upstream("r.example", "https://r.example", AuthPolicy.BOTH, ca_bundle=str(missing))
    client = UpstreamClient()
    try:
        with pytest.raises(UpstreamUnreachable) as refused:
            await client._own_origin_client(upstream)
        assert str(refused.value).startswith(f"upstream r.example: cannot verify TLS: CA bundle {missing} does not "
                                             f"exist; fix the file, then run `regcache upstream add")
    finally:
        await client.aclose()


# -- validation of a bundle ------------------------------------------------------------------------------

def _key_pem() -> bytes:
    return trustme.CA().private_key_pem.bytes()


def test_pem_certificates_reads_certificates_and_refuses_everything_else():
    ca1, ca2 = trustme.CA(), trustme.CA()
    text = b"subject=CN=one\n" + ca1.cert_pem.bytes() + b"\n# a comment\n" + ca2.cert_pem.bytes()
    assert len(pem_certificates(text, "CA bundle x")) == 2
    assert pem_certificates(text.replace(b"\n", b"\r\n"), "CA bundle x") == pem_certificates(text, "CA bundle x")
    der = ssl.PEM_cert_to_DER_cert(ca1.cert_pem.bytes().decode())
    body = ca1.cert_pem.bytes()
    for data, says in (
            (b"", "is empty"), (b" \n\n", "is empty"),
            (der, "is binary (perhaps DER"),
            (b"hello, I am not a certificate\n", "is text without a PEM certificate"),
            (body + _key_pem(), "holds a private key (line"),
            (body.replace(b"-----END CERTIFICATE-----", b""), "ends inside the block opened on line 1"),
            (body.replace(b"M", b"!", 1), "whose base64 does not decode (line 1)"),
            (b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "an empty certificate block"),
            (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "holds a 'X509 CRL' block"),
            (b"-----BEGIN \x1b[2JEVIL-----\nAAAA\n-----END \x1b[2JEVIL-----\n", "holds a another block")):
        with pytest.raises(ValidationError) as refused:
            pem_certificates(data, "CA bundle x")
        assert refused.value.message.startswith("CA bundle x ") and says in refused.value.message, refused.value
        assert "\x1b" not in refused.value.message


def test_a_bundle_that_is_not_a_usable_pem_file_is_refused_at_add_time_and_nothing_is_stored(
        home, keyring_env, tmp_path, private_ca):
    control = ControlPlane.open(home)
    try:
        big = tmp_path / "big.pem"
        big.write_bytes(private_ca.bundle.read_bytes() * (2 * 1024 * 1024 // len(private_ca.bundle.read_bytes())))
        fifo = tmp_path / "fifo.pem"
        os.mkfifo(fifo)  # nobody ever writes: reading it must not wait
        garbage = tmp_path / "garbage.pem"
        garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n")
        cases = {
            str(tmp_path / "missing.pem"): "does not exist",
            str(tmp_path): "is a directory",
            str(fifo): "is not a regular file",
            str(big): f"is larger than 1 MiB, the limit of the setting {CA_BUNDLE_MAX_SIZE_SETTING}",
            str(garbage): "holds a block OpenSSL does not accept as an X.509 certificate",
            "/dev/zero": "is not a regular file",
            "": "the CA bundle path is empty",
            "ca\x1b[2J.pem": "U+001B (ESC)",
        }
        for path, says in cases.items():
            with pytest.raises(ValidationError) as refused:
                control.add_upstream("private.example", "https://private.example", "both", ca_bundle=path)
            assert says in refused.value.message and refused.value.field == "ca_bundle", (path, refused.value)
            assert "\x1b" not in refused.value.message
        with pytest.raises(ValidationError, match="is plain http"):
            control.add_upstream("private.example", "http://private.example", "both",
                                 ca_bundle=str(private_ca.bundle))
        assert "private.example" not in control.catalogue()

        control.set_setting(CA_BUNDLE_MAX_SIZE_SETTING, "4MiB")  # a genuine big bundle: raise the setting
        assert control.add_upstream("private.example", "https://private.example", "both",
                                    ca_bundle=str(big)).ca_bundle == str(big)
    finally:
        control.close()


def test_an_unreadable_bundle_is_refused_naming_the_path(private_ca):
    """Permission denied, as a user without read access sees it (root reads anything: then run as nobody).

    The files live outside pytest's private temporary tree, and a readable twin is read in the same run: the
    refusal comes from the file's own mode."""
    with tempfile.TemporaryDirectory() as directory:
        Path(directory).chmod(0o755)
        readable, unreadable = Path(directory) / "readable.pem", Path(directory) / "unreadable.pem"
        for path, mode in ((readable, 0o644), (unreadable, 0o000)):
            shutil.copy(private_ca.bundle, path)
            path.chmod(mode)
        code = ("import sys\nfrom regcache.proxy.upstream.tls import read_ca_bundle\n"
                "for path in sys.argv[1:]:\n"
                "    try:\n        print(len(read_ca_bundle(path, 1 << 20).certificates))\n"
                "    except Exception as exc:\n        print(exc)\n")
        command = [sys.executable, "-c", code, str(readable), str(unreadable)]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == [
        "1", f"CA bundle {unreadable} cannot be read by this user (permission denied)"], result


def test_the_cli_takes_shows_and_refuses_a_ca_bundle(home, keyring_env, private_ca, tmp_path, monkeypatch):
    monkeypatch.chdir(private_ca.root)  # a relative path is stored absolute: the proxy runs elsewhere
    added = json.loads(ok("upstream", "add", "--login-server", "private.example", "--url", "private.example",
                          "--ca-bundle", "ca.pem", "-o", "json").stdout)
    assert added["caBundle"] == str(private_ca.bundle)
    table = ok("upstream", "list").stdout
    assert "CA BUNDLE" in table and str(private_ca.bundle) in table
    # a built-in overridden to a mirror signed by the private CA
    moved = json.loads(ok("upstream", "add", "--login-server", "ghcr.io", "--url", "https://mirror.example",
                          "--ca-bundle", str(private_ca.bundle), "-o", "json").stdout)
    assert moved["caBundle"] == str(private_ca.bundle) and moved["defaultUrl"] == "https://ghcr.io"
    listed = {u["loginServer"]: u for u in json.loads(ok("upstream", "list", "-o", "json").stdout)}
    assert listed["ghcr.io"]["caBundle"] == str(private_ca.bundle) and listed["quay.io"]["caBundle"] is None
    # add again without it: replaced, as the URL and allowed origins are
    again = json.loads(ok("upstream", "add", "--login-server", "private.example", "--url", "private.example",
                          "-o", "json").stdout)
    assert again["caBundle"] is None
    key = tmp_path / "key.pem"
    key.write_bytes(_key_pem())
    for bad, says in ((str(key), "holds a private key"), (str(tmp_path / "nope.pem"), "does not exist"),
                      ("ca\x07.pem", "U+0007 (BEL)")):
        refused = cli("upstream", "add", "--login-server", "private.example", "--url", "private.example",
                      "--ca-bundle", bad)
        assert refused.exit_code != 0 and says in refused.stderr, (bad, refused.stderr)
        assert "Traceback" not in refused.stderr and "\x07" not in refused.stderr


def test_rules_files_carry_the_ca_bundle_and_a_plan_shows_and_checks_it(home, keyring_env, private_ca, tmp_path):
    control = ControlPlane.open(home)
    try:
        control.add_upstream("private.example", "https://private.example", "both", ca_bundle=str(private_ca.bundle))
        control.add_upstream("ghcr.io", "https://mirror.example", ca_bundle=str(private_ca.bundle))
        exported = export_document(control)
        assert exported.count(f"caBundle: {private_ca.bundle}") == 2
        assert plan_document(control, exported) == []

        other = tmp_path / "other.pem"
        other.write_bytes(trustme.CA().cert_pem.bytes())
        changed = exported.replace(str(private_ca.bundle), str(other), 1)  # built-ins come first: ghcr.io's
        assert [str(c) for c in plan_document(control, changed)] == [
            f"~ upstream ghcr.io: CA bundle {private_ca.bundle} -> {other}"]
        missing = exported.replace(str(private_ca.bundle), str(tmp_path / "missing.pem"), 1)
        with pytest.raises(ValidationError, match="missing.pem does not exist"):
            plan_document(control, missing)
        apply_document(control, changed)
        assert control.catalogue().get("ghcr.io").ca_bundle == str(other)
        assert control.catalogue().get("ghcr.io").base_url == "https://mirror.example"

        dropped = "\n".join(line for line in exported.splitlines() if "caBundle" not in line)
        assert {str(c) for c in plan_document(control, dropped)} == {
            f"~ upstream ghcr.io: CA bundle {other} -> none",
            f"~ upstream private.example: CA bundle {private_ca.bundle} -> none"}
        apply_document(control, dropped)
        assert all(u.ca_bundle is None for u in control.list_upstreams())
    finally:
        control.close()
