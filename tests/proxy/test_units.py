"""One way to write sizes and counts (core.units), for the CLI, the TUI and the engine's messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from regcache.proxy.core.units import MAX_SIZE, format_count, format_size, parse_size
from regcache.tui import format as fmt


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
    (1024**2 - 1, "1 MiB"),  # rounds up to 1024 KiB: written in the next unit
    (5_033_165, "4.8 MiB"), (4 * 1024**2, "4 MiB"), (29_360_128, "28 MiB"), (32 * 1024**3, "32 GiB"),
    (int(1.25 * 1024**4), "1.2 TiB"), (1024**5, "1024 TiB"),
])
def test_sizes(n, text):
    assert format_size(n) == text
    assert fmt.size(n) == text  # the TUI writes them the same way


def test_no_size_is_a_dash_in_the_tui_and_none_in_the_engine():
    assert fmt.size(None) == "-" and format_size(None) is None


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_a_written_size_reads_back_within_its_rounding(n):
    text = format_size(n)
    number, unit = text.split(" ")
    assert unit in ("B", "KiB", "MiB", "GiB", "TiB") and (unit == "TiB" or float(number) < 1024)
    back = parse_size(text)
    assert abs(back - n) <= 0.05 * parse_size(f"1 {unit}") + 1  # one decimal of its unit


@pytest.mark.parametrize(("args", "text"), [
    ((0,), "0"), ((1000,), "1,000"), ((1_234_567,), "1,234,567"),
    ((1, "credential set"), "1 credential set"), ((2, "credential set"), "2 credential sets"),
    ((0, "hit"), "0 hits"), ((1, "repository", "repositories"), "1 repository"),
    ((1000, "repository", "repositories"), "1,000 repositories"), ((3, "miss", "misses"), "3 misses"),
])
def test_counts(args, text):
    assert format_count(*args) == text
    assert fmt.count(*args) == text
