"""The package builds as a wheel from the source files alone and works installed in a clean venv."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _source_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


@pytest.mark.slow
def test_wheel_installs_and_imports_in_a_clean_venv(tmp_path):
    source = tmp_path / "src"
    for name in _source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    assert not (source / "gen").exists(), "generated code must not be part of the source"
    wheels = tmp_path / "wheels"
    env = {**os.environ, "REGIONLOCK_REQUIRE_EXTENSION": "1"}
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("regionlock-*.whl")
    assert "cp3" in wheel.name, "the wheel must carry the compiled core"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = (
        "import regionlock.v1.device_check_pb2 as d, regionlock.v1.device_check_pb2_grpc as g;"
        "import regionlock.admin.v1.admin_pb2_grpc as a;"
        "import regionlock.core.geo as geo, regionlock.core.allowlist as al;"
        "assert geo.__file__.endswith('.so') and al.__file__.endswith('.so'), (geo.__file__, al.__file__);"
        "import pathlib; shipped = {p.name for p in pathlib.Path(geo.__file__).parent.iterdir()};"
        "assert {'geo.pxd', 'allowlist.pxd', 'trie.h', 'geo_walk.h', 'allowlist_records.h'} <= shipped, shipped;"
        "assert 'DeviceCheckService' in d.DESCRIPTOR.services_by_name;"
        "assert hasattr(a, 'AdminServiceStub') and hasattr(g, 'DeviceCheckServiceStub');"
        "print(d.__file__)"
    )
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(venv) in result.stdout
    help_text = subprocess.run([str(venv / "bin" / "regionlock"), "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    assert "serve" in help_text.stdout
