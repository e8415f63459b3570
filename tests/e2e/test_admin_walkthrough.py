"""The README's grpcurl walkthrough, run command by command against a server on the embedded demo data."""

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from regionlock.core.allowlist import Allowlist
from regionlock.core.allowlist_demo import build_demo
from regionlock.service.policy import default_policy_text
from regionlock.service.server.auth import create_token
from regionlock.service.server.embedded import DEMO_SEED

from support.service import start_server_process, stop_server_process, write_world

README = Path(__file__).resolve().parents[2] / "README.md"
DEMO_ROWS = 1000  # the first rows of the demo allowlist are the same whatever its size


def walkthrough_block() -> str:
    return re.search(r"<!-- admin-walkthrough:start -->\n```sh\n(.*?)```", README.read_text(), re.S).group(1)


def walkthrough_commands() -> list[str]:
    return [line for line in walkthrough_block().splitlines() if line.startswith("grpcurl ")]


def readme_bulk() -> dict:
    return json.loads(re.search(r"where `unlocks\.json` is.*?```json\n(.*?)```", README.read_text(), re.S).group(1))


@pytest.fixture
def demo(tmp_path, geolite2_db):
    """The embedded demo's data (GeoLite2-City, the demo allowlist, the default policy) with fewer serials."""
    settings = write_world(tmp_path / "demo")
    build_demo(DEMO_ROWS, settings.allowlist_path, seed=DEMO_SEED)
    settings.policy_path.write_text(default_policy_text())
    return replace(settings, geo=geolite2_db)


def test_readme_serials_are_in_the_demo_allowlist_with_the_markets_it_says(demo):
    exported = re.search(r"export SERIAL=(\S+) IP=(\S+) +# .*sold for (\w+)", walkthrough_block())
    serial, _ip, market = exported.groups()
    allowlist = Allowlist.open(demo.allowlist_path)
    assert allowlist.get(serial) == market
    assert [allowlist.get(item["serial"]) for item in readme_bulk()["items"]] == ["CN", "EEA"]


def test_readme_walkthrough(demo, tmp_path):
    token = create_token(demo.tokens_path, "alice", "operator")
    server = start_server_process(demo, tmp_path)
    try:
        bulk = readme_bulk()
        (tmp_path / "unlocks.json").write_text(json.dumps(bulk))
        (tmp_path / "unlocks-dry-run.json").write_text(json.dumps({**bulk, "dry_run": True}))
        serial, ip = re.search(r"export SERIAL=(\S+) IP=(\S+)", walkthrough_block()).groups()
        env = {
            **os.environ,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
            "CHECK": server.check_addr,
            "ADMIN": server.admin_addr,
            "TOKEN": token,
            "SERIAL": serial,
            "IP": ip,
        }
        outputs = []
        commands = walkthrough_commands()
        assert len(commands) == 9
        for command in commands:
            result = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, f"{command}\n{result.stderr}"
            outputs.append(result.stdout)
        listed, described, blocked, unlocked, allowed, audit, dry, bulk_set, deleted = outputs
        assert "regionlock.admin.v1.AdminService" in listed.split()
        assert "rpc SetOverride" in described
        assert json.loads(blocked)["reason"] == "REASON_REGION_RESTRICTED"
        assert json.loads(unlocked)["override"]["actor"] == "alice"
        assert json.loads(allowed)["reason"] == "REASON_OVERRIDE_UNLOCK"
        events = json.loads(audit)["events"]
        assert [(e["action"], e["ticket"]) for e in events] == [("set", "SUP-1234")]
        assert json.loads(dry)["created"] == 2
        assert json.loads(bulk_set)["created"] == 2
        assert int(json.loads(deleted)["revision"]) > int(json.loads(bulk_set)["revision"])
        assert token not in server.log()
    finally:
        assert stop_server_process(server) == 0, server.log()
