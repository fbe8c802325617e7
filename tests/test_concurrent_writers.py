"""One state directory, three writers: the TUI (with its embedded proxy), `regcache serve` and CLI commands.

A minute of mixed work: rules and credential sets created, updated and deleted by the CLI while
both proxies answer pulls and the TUI reads. No `database is locked` may reach anyone, and every
request is in the event log at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time

import httpx

from regcache.proxy.config.control import ControlPlane
from tests.helpers.commands import ServeProcess, regcache_executable
from tests.helpers.tmux import keys, screen, tmux, wait_for_text

DURATION = 60.0


def test_tui_serve_and_cli_share_one_state_directory(home, keyring_env, anonymous_registry, push_image):
    control = ControlPlane.open(home)
    control.add_upstream(anonymous_registry.host, anonymous_registry.url, "anonymous")
    control.create_rule("shared-lib", f"{anonymous_registry.host}/library/*", "lib/*")
    control.close()
    images = [push_image(anonymous_registry, f"library/img{i}", "1", layers=[20_000]) for i in range(4)]
    env = {**os.environ, **keyring_env, "REGCACHE_HOME": str(home)}

    serve = ServeProcess(home, "--listen", "127.0.0.1:0", env=keyring_env)
    session = f"regcache-writers-{os.getpid()}"
    envs = " ".join(f"{k}={v}" for k, v in keyring_env.items())
    # remain-on-exit: should the TUI die, its pane (and whatever it printed) stays for the failure report
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30",
         f"env {envs} TERM=xterm-256color {regcache_executable()} --home {home} tui --listen 127.0.0.1:0",
         ";", "set-option", "-t", session, "remain-on-exit", "on")
    problems: list[str] = []
    requests: dict[str, int] = {}  # by puller (its User-Agent), so a lost event names the proxy that lost it
    lock = threading.Lock()
    try:
        shown = wait_for_text(session, "running")
        tui_url = re.search(r"proxy (http://127\.0\.0\.1:\d+)", shown).group(1)
        keys(session, "4")  # the Activity blade polls the database every second
        deadline = time.monotonic() + DURATION

        def cli_writer(worker: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                name = f"w{worker}-rule-{i:04d}"
                for args in (["cache", "create", "-n", name, "-s", f"ghcr.io/acme/{name}", "-t", name],
                             ["cache", "update", "-n", name, "--freshness", "5m"],
                             ["credential-set", "create", "-n", f"w{worker}-cs-{i:04d}", "-l", "ghcr.io",
                              "-u", "env://U", "-p", "env://P"],
                             ["settings", "set", "max-size", f"{10 + i}GiB"],
                             ["cache", "list", "-o", "json"],
                             ["cache", "delete", "-n", name, "-y"],
                             ["credential-set", "delete", "-n", f"w{worker}-cs-{i:04d}", "-y"]):
                    result = subprocess.run([regcache_executable(), *args], capture_output=True, text=True,
                                            env=env, timeout=60)
                    if result.returncode != 0 or "locked" in result.stderr:
                        problems.append(f"{' '.join(args)}: {result.stderr.strip()}")
                i += 1

        def puller(base: str, agent: str) -> None:
            requests[agent] = 0
            with httpx.Client(base_url=base, timeout=30, headers={"User-Agent": agent}) as http:
                i = 0
                while time.monotonic() < deadline:
                    image = images[i % len(images)]
                    name = image.repository.replace("library/", "lib/")
                    for path in (f"/v2/{name}/manifests/1", f"/v2/{name}/blobs/{image.layers[0].digest}"):
                        started = time.monotonic()
                        try:
                            response = http.get(path)
                        except httpx.HTTPError as exc:
                            problems.append(f"{base}{path}: {type(exc).__name__} after "
                                            f"{time.monotonic() - started:.1f} s")
                            return
                        with lock:
                            requests[agent] += 1
                        if response.status_code != 200:
                            problems.append(f"{base}{path}: {response.status_code} {response.text[:200]}")
                    i += 1

        threads = [threading.Thread(target=cli_writer, args=(w,)) for w in range(2)]
        threads += [threading.Thread(target=puller, args=(url, f"puller-{i}-{kind}"))
                    for i, (kind, url) in enumerate((("serve", serve.url), ("tui", tui_url), ("serve", serve.url)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shown = screen(session)
        log = home / "regcache.log"
        assert not _pane_dead(session), (f"the TUI exited during the run; its screen:\n{shown}\nits log:\n"
                                         f"{log.read_text()[-3000:] if log.exists() else '(none)'}")
        assert "Activity" in shown
    finally:
        code, serve_output = serve.terminate()
        if not _pane_dead(session):
            keys(session, "q")
        for _ in range(100):
            if _pane_dead(session):
                break
            time.sleep(0.2)
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert problems == []
    assert code == 0 and "locked" not in serve_output and "Traceback" not in serve_output
    log = home / "regcache.log"
    assert not log.exists() or "locked" not in log.read_text()
    control = ControlPlane.open(home)
    try:
        events = control.store.events(limit=10_000_000)
        logged = {agent: sum(1 for e in events if e["user_agent"] == agent) for agent in requests}
        assert sum(requests.values()) > 100
        told = [line for line in (serve_output + (log.read_text() if log.exists() else "")).splitlines()
                if "event" in line]
        assert logged == requests, told  # nothing lost, by either proxy (a puller names its proxy)
        assert control.store.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        control.close()


def _pane_dead(session: str) -> bool:
    """Whether the session's program has exited (or the session is gone)."""
    shown = subprocess.run(["tmux", "display-message", "-p", "-t", session, "#{pane_dead}"], capture_output=True,
                           text=True)
    return shown.returncode != 0 or shown.stdout.strip() == "1"
