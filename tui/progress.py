"""A warm's progress in words, the same in the TUI and the CLI: bytes, rate and time left, per layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from regcache.proxy.core.text import printable
from regcache.proxy.core.units import format_size

if TYPE_CHECKING:
    from regcache.proxy.jobs.prefetch import LayerProgress, WarmProgress

#: what a layer's state is called on its line
STATES = {"waiting": "waiting", "fetching": "fetching", "cached": "cached", "fetched": "done", "failed": "failed"}


def eta(seconds: float | None) -> str:
    """``4s``, ``2m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rate(bytes_per_second: float | None) -> str:
    return "-" if bytes_per_second is None else f"{format_size(int(bytes_per_second))}/s"


def short_digest(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}:{encoded[:12]}"


def layer_line(layer: LayerProgress) -> str:
    """``sha256:1a2b3c4d5e6f  12.5MiB/28MiB  4.1MiB/s  ETA 4s  fetching``."""
    if layer.state == "cached":
        return f"{short_digest(layer.digest)}  {format_size(layer.size)}  already cached"
    amount = f"{format_size(layer.done)}/{format_size(layer.size)}"
    timing = f"  {rate(layer.rate)}  ETA {eta(layer.eta)}" if layer.state == "fetching" else (
        f"  {rate(layer.rate)}" if layer.state == "fetched" else "")
    return f"{short_digest(layer.digest)}  {amount}{timing}  {STATES[layer.state]}"


def warm_line(progress: WarmProgress) -> str:
    """``team/app:1.0: 2 of 5 blobs, 40.1MiB/120MiB, 8.2MiB/s, ETA 10s``."""
    finished = sum(layer.state in ("cached", "fetched") for layer in progress.layers)
    return (f"{progress.image}: {finished} of {len(progress.layers)} blobs, {format_size(progress.done)}/"
            f"{format_size(progress.total)}, {rate(progress.rate)}, ETA {eta(progress.eta)}")


class TerminalProgress:
    """A warm's progress on a terminal: the layer in flight on one line rewritten in place, a line kept for
    each layer once it is done, cached or failed. Call it with each WarmProgress."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.finished: set[str] = set()
        self.width = 0  # of the line in flight, to blank it out when a shorter one replaces it

    def __call__(self, progress: WarmProgress) -> None:
        for layer in progress.layers:
            if layer.digest in self.finished or layer.state == "waiting":
                continue
            line = printable(f"  {layer_line(layer)}")
            if layer.state == "fetching":
                self._rewrite(line)
                continue
            self._rewrite(line)
            self.stream.write("\n")
            self.width = 0
            self.finished.add(layer.digest)
        self.stream.flush()

    def _rewrite(self, line: str) -> None:
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
