"""The documents name real files: every repository path that README.md, docs/ and bench/README.md cite
(the guarantees table names the tests that verify each promise) exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a path inside the repository, in backticks: starts with one of its top-level directories
CITED = re.compile(r"`((?:tests|proxy|tui|bench|docs)/[A-Za-z0-9_./-]*)`")


#: a test named in a document: ``tests/…/test_x.py::test_name``
CITED_TEST = re.compile(r"`(tests/[A-Za-z0-9_./-]+\.py)::(\w+)`")


def cited_paths(text: str) -> list[str]:
    return CITED.findall(text)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_test_exists(document):
    missing = [f"{path}::{name}" for path, name in CITED_TEST.findall(document.read_text())
               if not (ROOT / path).exists()
               or not re.search(rf"^((async )?def {name}\(|{name} = )", (ROOT / path).read_text(), re.M)]
    assert missing == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_path_exists(document):
    missing = [path for path in cited_paths(document.read_text()) if not (ROOT / path).exists()]
    assert missing == []


def test_readme_guarantees_cite_their_tests_or_benchmarks():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Guarantees"):text.index("## Compatibility")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| guarantee")
            and not line.startswith("|---")]
    assert rows
    for row in rows:
        assert any(path.startswith(("tests/", "bench/")) for path in cited_paths(row)), row


def test_every_compatibility_cell_names_a_test():
    """The compatibility tables: a cell says "-" (not shown), "not allowed", "same test", or names its test
    (the upstream table's last column describes the wire, in words)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Compatibility"):text.index("## Operations beyond ACR")]
    clients, upstreams = section.split("| upstream |")
    words = ("-", "not allowed", "not allowed (as ACR)", "same test")
    checked = 0
    for table, described in ((clients, 0), (upstreams, 1)):
        for row in table.splitlines():
            if not row.startswith("| ") or row.startswith("| client |"):
                continue
            cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
            for cell in cells[:len(cells) - described]:
                assert cell in words or CITED_TEST.search(cell) or cited_paths(cell), (row, cell)
                checked += 1
    assert checked >= 30


def test_a_missing_path_is_seen():
    assert cited_paths("see `tests/proxy/nope.py` and `proxy/pull/cache.py`") == [
        "tests/proxy/nope.py", "proxy/pull/cache.py"]
    assert not (ROOT / "tests/proxy/nope.py").exists()
