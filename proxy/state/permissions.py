"""The state directory is private to its owner: the directory 0700, ``state.db`` and its WAL and shared-memory
files 0600, checked at every open (a directory made by an older version, restored from a backup or
created by hand keeps whatever mode it had otherwise)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("regcache.state")

DATABASE_FILES = ("state.db", "state.db-wal", "state.db-shm")
#: the blob store's directories under the state directory (not each blob: the directories keep others out)
BLOBS = "blobs"


def _narrow(path: Path, keep: int) -> int | None:
    """Clear the permission bits of ``path`` outside ``keep``; its old mode when it had any, else None."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    if not mode & ~keep:
        return None
    os.chmod(path, mode & keep)
    return mode


def make_private(home: Path) -> None:
    """Make ``home`` 0700 and its database files 0600 (and the blob directories under it 0700), with a
    warning naming what others could read before. Never fails the open: a mode that cannot be changed
    (another owner) is logged instead."""
    wider: list[str] = []
    targets = [(home, 0o700)] + [(home / name, 0o600) for name in DATABASE_FILES]
    blobs = home / BLOBS
    quiet = [(blobs, 0o700)]
    if blobs.is_dir():
        quiet += [(child, 0o700) for child in blobs.iterdir() if child.is_dir() and not child.is_symlink()]
    for path, keep in [*targets, *quiet]:
        try:
            old = _narrow(path, keep)
        except OSError as exc:
            log.warning("could not make %s private to its owner: %s", path, exc.strerror or exc)
            continue
        if old is not None and (path, keep) in targets:
            wider.append(f"{path.name if path != home else path} (was {old:04o})")
        elif old is not None:  # made with the process's umask; inside the private directory anyway
            log.debug("made %s private (was %04o)", path, old)
    if wider:
        log.warning("the state directory was open to other users; made private to its owner: %s",
                    ", ".join(wider))
