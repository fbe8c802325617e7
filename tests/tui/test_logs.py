"""regcache.log is rotated by size (log-max-size, 3 older files kept): a long-running TUI or `serve --log-file`
never fills the disk."""

from __future__ import annotations

import logging

import pytest

from regcache.proxy.config.control import ControlPlane
from regcache.proxy.core.errors import ValidationError
from regcache.proxy.core.settings import DEFAULT_LOG_MAX_SIZE, LOG_BACKUPS
from regcache.tui.logs import LOG_FILE, configured_max_size, log_to_file


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_log_is_rotated_at_log_max_size_and_three_old_files_are_kept(tmp_path, restore_logging):
    path = tmp_path / LOG_FILE
    limit = 64 * 1024
    log_to_file(path, limit)
    log = logging.getLogger("regcache.test")
    line = "x" * 200
    for i in range(10 * limit // 200):  # ten times the limit
        log.info("%d %s", i, line)
    logging.getLogger().handlers[0].flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [LOG_FILE] + [f"{LOG_FILE}.{n}" for n in range(1, LOG_BACKUPS + 1)]
    assert all((tmp_path / name).stat().st_size <= limit for name in files)
    assert sum((tmp_path / name).stat().st_size for name in files) <= (LOG_BACKUPS + 1) * limit
    assert f"{10 * limit // 200 - 1} x" in path.read_text()  # the newest line is in the current file


def test_log_max_size_is_a_setting_with_a_floor(home, keyring_env):
    control = ControlPlane.open(home)
    try:
        assert configured_max_size(home) == DEFAULT_LOG_MAX_SIZE == 10 * 1024 * 1024
        assert control.set_setting("log-max-size", "2MiB") == "2 MiB"
        assert configured_max_size(home) == 2 * 1024 * 1024
        with pytest.raises(ValidationError, match="must be at least 64 KiB"):
            control.set_setting("log-max-size", "0")
        assert configured_max_size(home) == 2 * 1024 * 1024
    finally:
        control.close()


def test_serve_logs_to_a_rotated_file_when_asked(home, keyring_env, tmp_path):
    import httpx

    from tests.helpers.commands import ServeProcess

    log = tmp_path / "serve.log"
    process = ServeProcess(home, "--listen", "127.0.0.1:0", "--log-file", str(log), env=keyring_env)
    try:
        httpx.get(f"{process.url}/v2/", timeout=10)
    finally:
        process.proc.terminate()
        process.proc.wait(20)
    assert log.exists() and log.stat().st_size > 0
    assert "finishing in-flight requests" in log.read_text()
