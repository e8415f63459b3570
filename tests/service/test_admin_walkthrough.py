"""The README's grpcurl walkthrough, run command by command against a server started as a subprocess."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from regionlock.service.auth import create_token

from fixtures_service import IP_CRIMEA, start_server_process, stop_server_process

README = Path(__file__).resolve().parents[2] / "README.md"
BULK = {
    "items": [
        {
            "serial": "CN-0001",
            "action": "OVERRIDE_ACTION_UNLOCK",
            "reason": "recall 2026-11",
            "ticket": "SUP-2000",
        },
        {
            "serial": "EEA-0001",
            "action": "OVERRIDE_ACTION_UNLOCK",
            "reason": "recall 2026-11",
            "ticket": "SUP-2000",
        },
    ]
}


def walkthrough_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- admin-walkthrough:start -->\n```sh\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("grpcurl ")]


def test_readme_walkthrough(world, tmp_path):
    token = create_token(world.tokens_path, "alice", "operator")
    server = start_server_process(world, tmp_path)
    try:
        (tmp_path / "unlocks.json").write_text(json.dumps(BULK))
        (tmp_path / "unlocks-dry-run.json").write_text(json.dumps({**BULK, "dry_run": True}))
        env = {
            **os.environ,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
            "CHECK": server.check_addr,
            "ADMIN": server.admin_addr,
            "TOKEN": token,
            "SERIAL": "GLOBAL-0001",
            "IP": IP_CRIMEA,
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
        listed, described, blocked, unlocked, allowed, audit, dry, bulk, deleted = outputs
        assert "regionlock.admin.v1.AdminService" in listed.split()
        assert "rpc SetOverride" in described
        assert json.loads(blocked)["reason"] == "REASON_REGION_RESTRICTED"
        assert json.loads(unlocked)["override"]["actor"] == "alice"
        assert json.loads(allowed)["reason"] == "REASON_OVERRIDE_UNLOCK"
        events = json.loads(audit)["events"]
        assert [(e["action"], e["ticket"]) for e in events] == [("set", "SUP-1234")]
        assert json.loads(dry)["created"] == 2
        assert json.loads(bulk)["created"] == 2
        assert int(json.loads(deleted)["revision"]) > int(json.loads(bulk)["revision"])
        assert token not in server.log()
    finally:
        assert stop_server_process(server) == 0, server.log()
