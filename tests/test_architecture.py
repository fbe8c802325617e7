"""Layering contracts (import-linter): the engine never imports the UI or Textual, its layers only import
downwards, its core does no I/O, and nothing imports a bare ``proxy`` or ``tui`` package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BARE_IMPORT = re.compile(r"^\s*(from|import)\s+(proxy|tui)(\.|\s|$)", re.M)


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on ``tree``, laid out as installed: ``tree/regcache/proxy`` and ``tree/regcache/tui``."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def installed_layout(tmp_path: Path) -> Path:
    for part in ("proxy", "tui"):
        shutil.copytree(ROOT / part, tmp_path / "regcache" / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_contracts_are_kept(tmp_path):
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "imported", "contract"), [
    ("core/rules.py", "textual", "The engine never imports the UI"),
    ("core/units.py", "sqlite3", "The core is pure: no I/O library, no concurrency, no storage"),
    ("core/models.py", "regcache.proxy.state.store", "The engine's layers only import downwards"),  # SQL in core
    ("storage/blobs.py", "regcache.proxy.jobs.eviction", "The engine's layers only import downwards"),  # a constant
    ("pull/cache.py", "regcache.proxy.config.control", "The engine's layers only import downwards"),  # health
])
def test_a_contract_catches_a_deliberate_violation(tmp_path, module, imported, contract):
    tree = installed_layout(tmp_path)
    with open(tree / "regcache" / "proxy" / module, "a") as f:
        f.write(f"\nimport {imported}  # a violation\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout
    dotted = "regcache.proxy." + module.removesuffix(".py").replace("/", ".")
    assert f"{dotted} -> {imported}" in result.stdout


def test_no_bare_proxy_or_tui_imports():
    """The packages install as regcache.proxy / regcache.tui; a bare ``proxy`` is another PyPI project."""
    offenders = [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}"
                 for part in ("proxy", "tui", "tests", "bench")
                 for path in sorted((ROOT / part).rglob("*.py"))
                 for text in [path.read_text()]
                 for m in BARE_IMPORT.finditer(text)]
    assert offenders == []


def test_bare_import_rule_sees_one():
    assert BARE_IMPORT.search("x = 1\nfrom proxy.core import rules\n")
    assert BARE_IMPORT.search("    import tui\n")
    assert not BARE_IMPORT.search("from regcache.proxy import ControlPlane\nimport proxyish\n")


def test_test_modules_import_helpers_not_other_test_modules():
    """Shared test code lives in tests/helpers (or a conftest), so a test module can move or go alone."""
    imports_a_test = re.compile(r"^\s*from\s+(tests\.\S*\.|\.+)test_\w+\s+import", re.M)
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "tests").rglob("*.py"))
                 if imports_a_test.search(path.read_text())]
    assert offenders == []


def import_cycles(*roots: str) -> list[tuple[str, str]]:
    """Pairs (a, b) where a imports b and b leads back to a: every edge of every import circle."""
    import grimp

    graph = grimp.build_graph(*roots)
    return [(m, i) for m in sorted(graph.modules) for i in sorted(graph.find_modules_directly_imported_by(m))
            if i in graph.modules and i != m and graph.chain_exists(i, m)]


def test_no_import_cycles_anywhere():
    """Not only between layers: no two modules of regcache import each other, directly or round a circle."""
    assert import_cycles("regcache.proxy", "regcache.tui") == []


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circle import b\n")
    (package / "b.py").write_text("from circle import c\n")
    (package / "c.py").write_text("from circle import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert set(import_cycles("circle")) == {("circle.a", "circle.b"), ("circle.b", "circle.c"),
                                            ("circle.c", "circle.a")}
