"""A bare `regionlock serve` on embedded defaults: builds the demo data once, serves, prints working examples."""

import json
import os
import shutil
import stat
import subprocess
import sys
import time

from regionlock.core.geo import GeoDatabase
from regionlock.service.server.embedded import prepare_embedded_data
from regionlock.service.server.settings import Settings
from regionlock.service.snapshot import load_data

from support.geo import as_built_before_aliases
from support.service import ServerProcess, free_port, regionlock_command, stop_server_process, wait_for_health


def _serve(data_dir, log_path):
    check, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = [
        *regionlock_command(),
        "serve",
        "--data-dir",
        str(data_dir),
        "--check-addr",
        check,
        "--admin-addr",
        admin,
        "--metrics-addr",
        "",
        "--workers",
        "1",
        "--demo-serials",
        "20000",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for_health(check, timeout=180, service="regionlock.v1.DeviceCheckService", process=process)
    # the examples are printed once the data is loaded, just after health turns SERVING
    deadline = time.monotonic() + 30
    while "Try:" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return process, check, admin


def _examples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("regionlock check", "grpcurl "))]


def test_first_start_builds_and_second_start_reuses(tmp_path):
    data = tmp_path / "var"
    process, check, admin = _serve(data, tmp_path / "first.log")
    try:
        first = (tmp_path / "first.log").read_text()
        for name in ("geo.rlgeo", "allowlist.rlallow", "policy.toml", "tokens.json", "admin.token"):
            assert (data / name).is_file(), name
        assert stat.S_IMODE((data / "admin.token").stat().st_mode) == 0o600
        token = (data / "admin.token").read_text().strip()
        assert token not in first  # the secret is in the file, never in the log
        examples = _examples(first)
        assert len(examples) >= 8, first
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
        answers = []
        for command in examples:
            result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60)
            assert result.returncode == 0, f"{command}\n{result.stderr}"
            answers.append(json.loads(result.stdout))
        reasons = {answer.get("reason") for answer in answers}
        assert {
            "REASON_AUTHORIZED",
            "REASON_GRAY_IMPORT",
            "REASON_REGION_RESTRICTED",
            "REASON_UNKNOWN_SERIAL",
            "REASON_UNKNOWN_REGION",
        } <= reasons
        # the demo allowlist and the default policy agree: a US device in the US is authorized
        lines = first.splitlines()
        labels = {line: lines[i - 1] for i, line in enumerate(lines) if line in examples}
        by_label = {labels[command]: answer for command, answer in zip(examples, answers, strict=True)}
        assert by_label["# authorized (a US device in the US)"]["reason"] == "REASON_AUTHORIZED"
        assert "not defined" not in first
        statuses = [answer for answer in answers if "serials" in answer]  # the Admin GetStatus example
        assert [status["serials"] for status in statuses] == ["20000"]
    finally:
        assert stop_server_process(ServerProcess(process, check, admin, tmp_path / "first.log")) == 0
    built = {name: (data / name).stat().st_mtime_ns for name in ("geo.rlgeo", "allowlist.rlallow", "tokens.json")}

    process, check, admin = _serve(data, tmp_path / "second.log")
    try:
        second = (tmp_path / "second.log").read_text()
        assert "building the region database" not in second
        assert "generating a demo allowlist" not in second
        assert {name: (data / name).stat().st_mtime_ns for name in built} == built
        assert len(_examples(second)) == len(_examples(first))  # the same data, so the same examples
    finally:
        assert stop_server_process(ServerProcess(process, check, admin, tmp_path / "second.log")) == 0


def test_demo_geo_data_from_before_ipv4_aliases_is_rebuilt(tmp_path, caplog, geolite2_db):
    """A data directory from an older release: its geo database would let 2002:565:d001::1 (Crimea) through."""
    settings = Settings(data_dir=tmp_path, demo_serials=1000)
    # the demo's region database is GeoLite2-City built as the session's geolite2_db was: start from a copy of it
    shutil.copyfile(geolite2_db, settings.geo_path)
    copied = settings.geo_path.stat().st_mtime_ns
    prepare_embedded_data(settings)
    assert settings.geo_path.stat().st_mtime_ns == copied  # reused, as a second start reuses it
    as_built_before_aliases(settings.geo_path)
    assert GeoDatabase.open(settings.geo_path).lookup("2002:565:d001::1") is None
    load_data(settings)
    assert "built before IPv4 aliases" in caplog.text
    prepare_embedded_data(settings)
    assert GeoDatabase.open(settings.geo_path).lookup("2002:565:d001::1").subdivision == "UA-43"
    caplog.clear()
    load_data(settings)
    assert "built before IPv4 aliases" not in caplog.text
