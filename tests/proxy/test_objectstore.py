"""The object store's pure decisions: part sizes within S3's limits, and when an upload is abandoned."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from regcache.proxy.storage.objectstore import MAX_PARTS, MIN_PART_SIZE, PendingUpload, part_size_for

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 8 * MiB, 8 * GiB, 100 * GiB, None])
def test_parts_stay_within_the_part_size_and_count_limits(size):
    part = part_size_for(size)
    assert part >= MIN_PART_SIZE >= 5 * MiB
    assert part % MiB == 0
    assert -(-(size or 0) // part) <= MAX_PARTS


def test_unknown_size_allows_blobs_of_tens_of_gigabytes():
    assert part_size_for(None) * MAX_PARTS >= 60 * GiB


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(hours=24)


@pytest.mark.parametrize("owner, age, stale", [
    (None, timedelta(minutes=1), False),  # its node records the owner right after creating it
    (None, timedelta(minutes=11), True),
    ({"host": "here", "pid": os.getpid()}, timedelta(hours=23), False),  # a live node on this host
    ({"host": "here", "pid": "DEAD"}, timedelta(seconds=1), True),  # its node on this host is gone
    ({"host": "elsewhere", "pid": 1}, timedelta(hours=23), False),  # cannot check: wait for the age limit
    ({"host": "elsewhere", "pid": 1}, timedelta(hours=25), True),
])
def test_an_upload_is_abandoned_when_its_node_is_gone_or_it_is_too_old(owner, age, stale):
    if owner and owner["pid"] == "DEAD":
        owner = {**owner, "pid": _dead_pid()}
    upload = PendingUpload("regcache/blobs/sha256/ab/ab", "id", NOW - age, owner)
    why = upload.stale(NOW, DAY, "here")
    assert (why is not None) == stale, why
