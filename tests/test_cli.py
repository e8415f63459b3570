"""The `regionlock` command: help everywhere, bad usage as one line on stderr with exit code 2."""

import json
import subprocess

import pytest

from regionlock.service.cli import main

from fixtures_service import regionlock_command


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*regionlock_command(), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args",
    [(), ("serve",), ("check",), ("policy",), ("policy", "check"), ("geo",), ("allowlist",), ("token",)],
)
def test_help_everywhere(args):
    result = run(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("serve", "--no-such-flag"),
        ("serve", "--workers", "lots"),
        ("serve", "--check-addr", "nowhere"),
        ("check", "SERIAL"),
        ("policy", "check", "/nonexistent/policy.toml"),
    ],
)
def test_bad_usage_is_one_line_and_exit_code_2(args):
    result = run(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_policy_check_and_default(tmp_path, capsys):
    assert main(["policy", "default"]) == 0
    default = capsys.readouterr().out
    path = tmp_path / "p.toml"
    path.write_text(default)
    assert main(["policy", "check", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "enforce"
    assert summary["restricted"][0]["id"] == "sanctions"
    path.write_text('mode = "loud"\n')
    assert main(["policy", "check", str(path)]) == 2
    assert "mode" in capsys.readouterr().err
