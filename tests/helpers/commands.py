"""The installed `regcache` command, and `regcache serve` as a real process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def regcache_executable() -> str:
    found = shutil.which("regcache") or str(Path(sys.executable).parent / "regcache")
    assert Path(found).exists(), "the regcache command is not installed: pip install -e '.[test]'"
    return found


class ServeProcess:
    """``regcache --home HOME serve ARGS``, started and read until it says where it serves."""


    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None, prelude: str | None = None) -> None:
        # preexec_fn: run in the child before regcache starts (e.g. to lower its open-files limit);
        # prelude: Python run in the child before the command's main (e.g. to turn a module's switch off)
        command = [regcache_executable()] if prelude is None else [
            sys.executable, "-c", f"{prelude}\nfrom regcache.tui.cli import main\nmain()"]
        self.proc = subprocess.Popen([*command, "--home", str(home), "serve", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self.url = self._wait_ready()
        # Keep reading: a full pipe would block the server on its next log line.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _wait_ready(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if m := re.search(r"serving (https?://\S+)", line):
                return m.group(1)
        self.proc.kill()
        raise AssertionError("regcache serve did not start:\n" + "".join(self.lines))

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def terminate(self, timeout: float = 20) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        return self.proc.returncode, "".join(self.lines)
