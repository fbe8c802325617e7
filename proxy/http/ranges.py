"""The ``Range`` header of blob requests: one ``bytes=START-END`` range, checked against the blob's size."""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcache.proxy.http.errors import RegistryError


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # exclusive


#: byte positions with more digits than this are past the end of any blob (and int() refuses 4,300+ digits)
_MAX_POSITION_DIGITS = 18


def _position(digits: str) -> int:
    """A byte position from the ASCII digits of a Range header; absurdly long ones are clamped, not parsed."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else 10 ** _MAX_POSITION_DIGITS


def parse_range(header: str | None, size: int | None) -> ByteRange | None:
    """A single ``bytes=`` range; None for no header; RANGE errors (416) for what cannot be served."""
    if header is None:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        raise RegistryError(416, "RANGE_INVALID", "Range must be a single 'bytes=START-END' range",
                            headers={"Content-Range": f"bytes */{size}"} if size is not None else None)
    first, last = m.group(1), m.group(2)
    if size is None:
        raise RegistryError(416, "RANGE_INVALID", "the blob's size is not known yet; retry without Range")
    if not first:  # suffix: the last N bytes
        n = _position(last)
        if n == 0:
            raise RegistryError(416, "RANGE_INVALID", "an empty suffix range", {"size": size},
                                headers={"Content-Range": f"bytes */{size}"})
        return ByteRange(max(size - n, 0), size)
    start = _position(first)
    end = min(_position(last) + 1, size) if last else size
    if start >= size or (last and _position(last) < start):
        raise RegistryError(416, "RANGE_INVALID",
                            f"range {header.strip()[:100]!r} is outside the blob of {size} bytes", {"size": size},
                            headers={"Content-Range": f"bytes */{size}"})
    return ByteRange(start, end)
