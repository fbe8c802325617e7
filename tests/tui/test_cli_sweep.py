"""Every CLI command, every option and argument, given hostile values: no traceback, nothing raw on the
terminal, and a non-zero exit for what cannot be valid. The commands are enumerated from the click group,
so a new command is swept too (and this test asks for a valid base value of each of its required inputs)."""

from __future__ import annotations

import os
import subprocess

import click
import pytest
from click.testing import CliRunner

from regcache.proxy.config.control import ControlPlane
from regcache.tui.cli import main
from tests.helpers.cli import COMMANDS, inputs, invocation
from tests.helpers.commands import regcache_executable

#: hostile values, by name; those in MUST_FAIL can be valid nowhere (a file path excepted)
HOSTILE = {
    "markup": "[bold red]x[/bold red][link=http://e.example]y[/link]",
    "escapes": "\x1b[31mred\x1b]0;title\x07\x1b[2J",
    "bidi": "abc\u202eevil\u2066x",
    "c1": "a\x9bb\x85c",
    "newline": "a\nb",
    "nul": "a\x00b",
    "unicode": "ünïcödé-名前-🙂",
    "100KB": "a" * 100_000,
    "100KB [": "[" * 100_000,
    "empty": "",
}
MUST_FAIL = {"escapes", "bidi", "c1", "newline", "nul", "100KB", "100KB ["}
#: what a terminal would act on if printed raw
RAW = ("\x1b", "\x07", "\x9b", "\x85", "\x00", "\u202e", "\u2066")

@pytest.fixture
def state(home, keyring_env, tmp_path, monkeypatch):
    """A cache with one of everything the base values name; servers never start (an accepted listen address
    would fail the test instead of hanging it); upstreams are a closed local port."""
    import regcache.proxy.server as server
    import regcache.tui.app as app

    async def no_serving(*args, **kwargs):
        raise WouldServe("the proxy would have started serving")

    def no_app(*args, **kwargs):
        raise WouldServe("the TUI would have opened")

    monkeypatch.setattr(server.ProxyServer, "serve", no_serving)
    monkeypatch.setattr(app, "run_app", no_app)
    monkeypatch.setenv("SWEEP_USER", "user")
    monkeypatch.setenv("SWEEP_PASSWORD", "password")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules.yaml").write_text("cacheRules: []\n")
    control = ControlPlane.open(home)
    try:
        control.add_upstream("registry.example", "http://127.0.0.1:9")
        control.add_upstream("ghcr.io", "http://127.0.0.1:9")
        control.create_credential_set("hub-creds", "ghcr.io", "env://SWEEP_USER", "env://SWEEP_PASSWORD")
        control.create_rule("ubuntu-rule", "ghcr.io/acme/app", "app", "hub-creds")
        control.create_token("ci-token", ["app"])
    finally:
        control.close()
    return home


class WouldServe(Exception):
    """`serve` or `tui` accepted its input and got as far as starting."""


def check(result, path: str, what: str, must_fail: bool, problems: list[str]) -> None:
    out = result.output
    exc = result.exception
    if isinstance(exc, BaseExceptionGroup) and exc.split(WouldServe)[1] is None:  # only WouldServe inside
        exc = WouldServe(str(exc))
    if isinstance(exc, WouldServe):  # accepted (an empty --metrics-listen is "none"): fine unless it must fail
        if must_fail:
            problems.append(f"{path} {what}: accepted ({exc})")
    elif exc is not None and not isinstance(exc, SystemExit):
        problems.append(f"{path} {what}: {type(exc).__name__}: {exc}")
    if "Traceback" in out:
        problems.append(f"{path} {what}: a traceback")
    if any(char in out for char in RAW):
        problems.append(f"{path} {what}: raw control characters in {out[:200]!r}")
    if must_fail and result.exit_code == 0:
        problems.append(f"{path} {what}: accepted (exit 0)")


@pytest.mark.parametrize("path", list(COMMANDS))
def test_every_command_with_hostile_input(state, path):
    command = COMMANDS[path]
    runner = CliRunner()
    problems: list[str] = []
    cases: list[tuple[str, list[str], bool]] = []
    for name, value in HOSTILE.items():
        for param in inputs(command):
            is_path = isinstance(param.type, (click.Path, click.File))
            if is_path and "\x00" in value:
                continue  # no command line can carry a NUL (argv strings end at one); paths go to the OS as they are
            cases.append((f"{param.name}={name}", invocation(path, command, param, value),
                          name in MUST_FAIL and not is_path))
        base = invocation(path, command, None, "")
        cases.append((f"extra argument {name}", [*base, value], name != "empty"))
        if value:
            cases.append((f"unknown option {name}", [*base, f"--{value}"], True))
    for what, args, must_fail in cases:
        result = runner.invoke(main, args, input="a-secret-value\n")
        check(result, path, what, must_fail, problems)
    assert problems == []


def test_every_command_is_swept():
    """The sweep sees every command the CLI has (a command module that does not import fails here)."""
    assert {"cache create", "upstream add", "rules apply", "settings set", "storage set s3", "token create",
            "secret set", "client-config", "warm", "serve", "tui", "gc"} <= set(COMMANDS)
    assert len(COMMANDS) >= 30


def test_the_installed_command_prints_no_traceback_for_the_reviewed_inputs(home, tmp_path):
    """The review's findings, through the real executable: one line, exit 1, nothing raw."""
    exe = regcache_executable()
    deep = tmp_path / "deep.yaml"
    deep.write_text("cacheRules: " + "[" * 10_000 + "\n")
    env = {**os.environ, "REGCACHE_HOME": str(home)}
    for args in (["upstream", "add", "--login-server", "x.example", "--url", "http://a[b]c"],
                 ["upstream", "add", "--login-server", "x.example", "--url", "http://a\x1b[31mb\x07"],
                 ["upstream", "add", "--login-server", "x.example", "--url", "http://a b"],
                 ["rules", "apply", "-f", str(deep)],
                 ["settings", "set", "max-size", "9" * 400]):
        result = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr and not any(c in result.stderr for c in RAW)
