"""The package as a user installs it: a wheel (not the editable install the suite runs on) that holds every
module and style sheet under ``regcache/``, installed into a fresh venv, imports, answers ``--help`` and
draws the TUI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.helpers.tmux import keys, screen, tmux, wait_for_text

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "tui")


def tree_files() -> set[str]:
    """What the wheel must hold, named as installed: every module, style sheet and py.typed marker."""
    return {f"regcache/{part}/{path.relative_to(ROOT / part).as_posix()}"
            for part in PACKAGES for path in (ROOT / part).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
            and (path.suffix in (".py", ".tcss") or path.name == "py.typed")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("source")  # setuptools writes build/ into the tree it builds
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for part in PACKAGES:
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                   check=True, timeout=600, capture_output=True)
    return next(out.glob("regcache-*.whl"))


def test_wheel_holds_every_module_and_style_sheet_under_regcache(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert tree_files() - names == set()
    assert "regcache/tui/app.tcss" in names and "regcache/tui/blades/rules.py" in names
    # no generic top-level packages: `proxy` is another project's import name on PyPI
    assert {n.split("/", 1)[0] for n in names if not n.startswith("regcache-")} == {"regcache"}
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "regcache = regcache.tui.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed, not editable; returns its bin directory."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin"


def run_installed(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # run outside the clone: its proxy/ and tui/ directories must not be what gets imported
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd)})


IMPORT_ALL = """
import importlib, pkgutil, regcache.proxy, regcache.tui
names = []
for package in (regcache.proxy, regcache.tui):
    assert package.__file__.startswith(%r), package.__file__
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name != "regcache.tui.cli.__main__":  # running it would start the command
            importlib.import_module(module.name)
            names.append(module.name)
print(len(names))
"""


@pytest.mark.slow
def test_installed_wheel_imports_every_module(installed, tmp_path):
    site = str(installed.parent / "lib")
    result = run_installed(installed, str(installed / "python"), "-c", IMPORT_ALL % site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = {name for name in tree_files() if name.endswith(".py") and not name.endswith("/__main__.py")}
    assert int(result.stdout) == len(expected) - 2  # walk_packages does not list the two roots themselves


@pytest.mark.slow
def test_installed_command_answers_help(installed, tmp_path):
    result = run_installed(installed, str(installed / "regcache"), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "credential-set" in result.stdout and "cache" in result.stdout


@pytest.mark.slow
def test_installed_tui_draws_the_cache_rules_blade(installed, tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: apt-get install -y tmux", pytrace=False)
    name = f"regcache-wheel-{os.getpid()}"
    command = (f"env -i PATH={installed}:/usr/bin:/bin HOME={tmp_path} TERM=xterm-256color "
               f"REGCACHE_HOME={tmp_path / 'home'} {installed / 'regcache'} tui --listen 127.0.0.1:0")
    tmux("new-session", "-d", "-s", name, "-x", "80", "-y", "24", "-c", str(tmp_path), command)
    try:
        wait_for_text(name, "running")
        keys(name, "2")
        shown = wait_for_text(name, "No cache rules yet")
        assert "Cache rules" in shown
    except AssertionError:
        raise AssertionError("the installed TUI did not draw:\n" + screen(name)) from None
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, timeout=30)


MYPY = Path(sys.executable).parent / "mypy"


def stub_requirements() -> list[str]:
    """The stub packages of the test extras (types-PyYAML, ...): mypy looks for them only in the environment
    it checks, so the type check installs them there."""
    test_extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {req: re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower() for req in test_extras}
    return [req for req, name in names.items() if name.startswith("types-") or name.endswith("-stubs")]


@pytest.mark.slow
def test_types_check_against_the_installed_wheel(installed, tmp_path):
    stubs = stub_requirements()
    assert stubs, "the test extras name no stub packages"
    result = subprocess.run([str(installed / "pip"), "install", "-q", *stubs], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_installed(installed, str(MYPY), "--config-file", str(ROOT / "pyproject.toml"),
                           "--python-executable", str(installed / "python"), "-p", "regcache.proxy", "-p",
                           "regcache.tui", cwd=tmp_path)
    assert result.returncode == 0, "mypy found errors in the installed package:\n" + result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


@pytest.mark.slow
def test_strict_type_check_covers_core_and_only_core(installed, tmp_path):
    """pyproject.toml spells out strict mode's flags for regcache.proxy.core (``strict = true`` in an override
    would turn them on everywhere): an unannotated function fails the check in core, and passes elsewhere."""
    site_tree = next((installed.parent / "lib").glob("python3.*/site-packages/regcache"))
    src = tmp_path / "src"
    shutil.copytree(site_tree, src / "regcache", ignore=shutil.ignore_patterns("__pycache__"))
    untyped = "\n\ndef untyped(x):\n    return x\n"
    for module in ("proxy/core/units.py", "tui/format.py"):
        with open(src / "regcache" / module, "a") as f:
            f.write(untyped)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # The dev venv as the environment: mypy cannot see its editable install, so the copy on MYPYPATH is the
    # only regcache (next to an installed one, mypy would check that instead).
    result = subprocess.run(
        [str(MYPY), "--config-file", str(ROOT / "pyproject.toml"), "--python-executable", sys.executable,
         "-p", "regcache.proxy.core", "-m", "regcache.tui.format"],
        capture_output=True, text=True, timeout=120, cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "MYPYPATH": str(src)})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"{src}/regcache/proxy/core/units.py:"), output
    assert "[no-untyped-def]" in errors[0], output
