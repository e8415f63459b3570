"""`regionlock --version`: the installed package's version, exit code 0."""

import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

from support.service import regionlock_command

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_version_prints_the_installed_version():
    result = subprocess.run([*regionlock_command(), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"regionlock {version('regionlock')}\n"
    assert result.stderr == ""
    assert version("regionlock") == tomllib.loads(PYPROJECT.read_text())["project"]["version"]
