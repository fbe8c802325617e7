"""Where regcache's log goes: a file in the state directory, rotated by size, so a TUI or `serve` left running
for months never fills the disk (``log-max-size``, with LOG_BACKUPS older files kept)."""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

from regcache.proxy.core.settings import LOG_BACKUPS, LOG_MAX_SIZE_SETTING, log_max_size

#: the TUI's log, in the state directory (nothing may print into the TUI's terminal)
LOG_FILE = "regcache.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configured_max_size(home: Path) -> int:
    """The log-max-size setting of the state directory ``home`` (the default when unset)."""
    from regcache.proxy.state.store import StateStore

    store = StateStore.open(home)
    try:
        return log_max_size(store.setting(LOG_MAX_SIZE_SETTING))
    finally:
        store.close()


def log_to_file(path: Path, max_bytes: int, level: int | str = logging.INFO) -> RotatingFileHandler:
    """Send every log record to ``path``, rotated when it would pass ``max_bytes`` (``path.1`` ... ``path.3``
    kept); replaces any handler set before. httpx's request lines stay out (the event log has them)."""
    handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(handlers=[handler], level=level, force=True)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler
