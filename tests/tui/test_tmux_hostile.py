"""The real `regcache` TUI under tmux, its embedded proxy pulled through by hostile clients from a hostile
upstream (issue 13): markup and escape sequences in forwarding headers, user agents, references, rate-limit
headers and media types end up in events, budgets and errors; every blade and the rule details open, the
process lives on, and the pane shows the data as text, with no traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from regcache.proxy.core.oci import OCI_MANIFEST
from regcache.tui.backend import Backend
from regcache.tui.widgets.nav import BLADES
from tests.helpers.hostile_upstream import HostileUpstream
from tests.helpers.tmux import exit_status, keys, screen, start_tui, tmux, wait_for_text

pytestmark = pytest.mark.slow

OSC52 = "\x1b]52;c;ZXZpbA==\x07"
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64, "size": 2},
    "layers": []}).encode()
#: a manifest whose media type is markup and an escape sequence (JSON carries the ESC as \u001b)
ODD_MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/[@click=app.quit]\x1b[2Ja[/b]c",
                           "layers": []}).encode()


@pytest.fixture
def hostile(home, keyring_env):
    upstream = HostileUpstream().start()
    upstream.rate_limit = (b"[@click=app.quit]100", "7\x9b2J[/b]\u202e".encode())  # C1 CSI and a bidi override
    upstream.manifests[("evil/app", "1")] = ("text/[bold]html; charset=\"[@click=app.quit]\"", MANIFEST)
    upstream.manifests[("evil/odd", "1")] = ("application/[link=https://evil.example]x", ODD_MANIFEST)
    upstream.tag_lists["evil/app"] = json.dumps({"name": "evil/app", "tags": ["a[/b]c", "\x1b[2J", "1"]}).encode()
    upstream.tag_list_media_type = "application/[@click=app.quit]json"
    backend = Backend.open(home)
    try:
        control = backend.control
        control.add_upstream(upstream.host, upstream.url, "both")
        control.create_credential_set("evil-creds", upstream.host, "keyring://svc/[@click=app.quit]a[/b]c",
                                      "keyring://svc/password")
        control.create_rule("evil-all", f"{upstream.host}/evil/*", "evil/*", sync_tags="regex:^(v|[/]release)")
        control.create_rule("evil-auth", f"{upstream.host}/auth/*", "auth/*", "evil-creds")
        # configuration no check lets in today, as a database written before the checks holds it
        with control.store.conn:
            control.store.conn.execute("UPDATE credential_sets SET password_secret_id = ? WHERE name = ?",
                                       [f"keyring://svc/{OSC52}", "evil-creds"])
    finally:
        backend.close()
    yield upstream
    upstream.stop()


@pytest.fixture
def session(home, keyring_env, hostile):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: apt-get install -y tmux", pytrace=False)
    name = f"regcache-hostile-{os.getpid()}"
    yield start_tui(name, home, keyring_env, 200, 50)  # wide: every column shows
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=30)


def request(port: int, path: str, headers: bytes = b"") -> bytes:
    """One raw HTTP/1.1 GET: header bytes no HTTP client library would send."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + headers
                     + b"\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def alive(session: str) -> bool:
    return tmux("display-message", "-p", "-t", session, "#{pane_dead}").strip() == "0"


def test_hostile_pulls_through_the_embedded_proxy_leave_the_tui_running(session, hostile, home):
    shown = wait_for_text(session, "running")
    port = int(re.search(r"proxy http://127\.0\.0\.1:(\d+)", shown)[1])
    pulls = [
        ("/v2/evil/app/manifests/1", b"X-Forwarded-For: a[/b]c\r\nUser-Agent: [@click=app.quit]\xc2\x9b2J\r\n"),
        ("/v2/evil/app/manifests/1", b"User-Agent: x\x1b]52;c;ZXZpbA==\x07\r\n"),  # refused: ESC in a header
        ("/v2/evil/odd/manifests/1", b"X-Forwarded-For: [bold]\r\n"),
        ("/v2/evil/x/manifests/a%5Bb%5D", b""),  # a[b]
        ("/v2/evil/x/manifests/%1B%5B2J%5Bbold%5D", b""),  # ESC[2J[bold]
        ("/v2/evil/x/manifests/sha256:%5B%40click%3Dapp.quit%5D", b""),
        ("/v2/evil/app/tags/list", b""),
        ("/v2/auth/app/manifests/1", b""),  # its credentials are not in the keyring
    ]
    answers = [request(port, path, headers) for path, headers in pulls]
    assert answers[0].startswith(b"HTTP/1.1 200"), answers[0][:300]
    assert all(a.startswith(b"HTTP/1.1 ") for a in answers)

    # what each blade shows once loaded: every blade of the navigation, by its key
    blades = {"1": "Recent errors", "2": "evil-all", "3": "evil-creds", "4": "a[b]", "5": "[@click=app.quit]100",
              "6": "No client tokens"}
    assert list(blades) == [str(i) for i in range(1, len(BLADES) + 1)]
    shown = {}
    for key, expect in blades.items():
        keys(session, key)
        shown[key] = wait_for_text(session, expect, timeout=20)  # blades reload every 1 to 5 s
        assert alive(session), screen(session)
    assert "\\x1b[2J[bold]" in shown["4"], shown["4"]  # a reference, its ESC spelled out
    assert "\\x9b2J[/b]\\u202e" in shown["5"], shown["5"]  # the budget as the upstream sent it
    keys(session, "3")
    wait_for_text(session, "keyring://svc/[@click=app.quit]a[/b]c", timeout=20)
    keys(session, "2")
    wait_for_text(session, "evil-all")
    keys(session, "Enter")
    wait_for_text(session, "Cache rule evil-all", timeout=20)
    wait_for_text(session, "regex:^(v|[/]release)")  # the tag sync line comes with the details' data
    keys(session, "Escape", "Down", "d")
    wait_for_text(session, "Delete cache rule")
    keys(session, "n", "1")
    wait_for_text(session, "Recent errors")
    time.sleep(2)  # one more reload of every shown blade
    final = screen(session)
    assert alive(session), final
    assert "Traceback" not in final and "MarkupError" not in final, final
    keys(session, "q")
    deadline = time.monotonic() + 20
    while alive(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(session), "regcache did not quit on q:\n" + screen(session)
    assert exit_status(home) == "0", screen(session)
