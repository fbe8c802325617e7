"""Layering contracts (import-linter): the engine never imports the UI or Textual."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([exe, "--config", "pyproject.toml", "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_contract_catches_the_engine_importing_textual(tmp_path):
    for part in ("proxy", "tui"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "proxy" / "rules.py", "a") as f:
        f.write("\nimport textual  # a violation\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "The engine never imports the UI BROKEN" in result.stdout
    assert "proxy.rules -> textual" in result.stdout
