"""Driving the real `regcache` command in a tmux pane: type keys, read the screen."""

from __future__ import annotations

import subprocess
import time


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for_text(session: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the screen shows:\n{screen(session)}")


def keys(session: str, *names: str) -> None:
    for name in names:
        tmux("send-keys", "-t", session, name)
        time.sleep(0.15)


def start_tui(name: str, home, env: dict[str, str], width: int = 80, height: int = 24) -> str:
    """The real `regcache tui` (embedded proxy on a free port) in a ``width`` x ``height`` pane named ``name``.

    pytest's COLUMNS and LINES would win over the pane's size, so they are unset; the pane stays after the app
    exits (a crash leaves its traceback to read), and the exit status goes to a file (:func:`exit_status`),
    as tmux sometimes marks a pane dead without its status.
    """
    from tests.helpers.commands import regcache_executable

    variables = " ".join(f"{k}={v}" for k, v in env.items())
    command = (f"env -u COLUMNS -u LINES {variables} TERM=xterm-256color {regcache_executable()} --home {home} tui "
               f"--listen 127.0.0.1:0; echo $? > {home}.exit")
    tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), command)
    tmux("set-option", "-w", "-t", name, "window-size", "manual")
    tmux("set-option", "-w", "-t", name, "remain-on-exit", "on")
    return name


def exit_status(home, timeout: float = 20) -> str | None:
    """The exit status of the TUI :func:`start_tui` started on ``home``, once it exited (None: not within timeout)."""
    written = home.parent / f"{home.name}.exit"
    deadline = time.monotonic() + timeout
    while not written.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return written.read_text().strip() if written.exists() else None


def quit_cleanly(session: str, home) -> None:
    """``q``, then the TUI :func:`start_tui` started must exit with 0 and leave no traceback on the pane."""
    keys(session, "q")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if tmux("display-message", "-p", "-t", session, "#{pane_dead}").strip() == "1":
            break
        time.sleep(0.2)
    final = screen(session)
    assert exit_status(home) == "0", final
    assert "Traceback" not in final
