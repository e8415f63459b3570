"""Tokens live: created or revoked with `regionlock token`, in force within a second, with no reload.

In-process (TokenFile and a real Service on port 0) and as a user runs it: `regionlock serve --workers 2`
and the `regionlock token` commands in a shell, defaulting to the data directory's token file.
"""

from __future__ import annotations

import os
import subprocess
import time

import grpc
import pytest

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.service.errors import Unauthenticated
from regionlock.service.server.auth import TokenFile, create_token, revoke_token

from support.service import regionlock_command, start_server_process, stop_server_process

STATUS = "/regionlock.admin.v1.AdminService/GetStatus"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_file_re_reads_only_after_the_interval_and_only_when_changed(tmp_path, monkeypatch):
    path = tmp_path / "tokens.json"
    clock = Clock()
    changes = []
    tokens = TokenFile(path, on_change=lambda before, after: changes.append(len(after.entries)), clock=clock)
    assert tokens.current().entries == []  # no file yet: no tokens
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **kw: stats.append(p) or real_stat(p, *a, **kw))
    secret = create_token(path, "alice", "operator")
    for _ in range(1000):  # the call path: no stat until the interval has passed
        with pytest.raises(Unauthenticated):
            tokens.check(f"Bearer {secret}", STATUS)
    assert len([p for p in stats if str(p) == str(path)]) <= 1
    clock.now += 0.5
    assert tokens.check(f"Bearer {secret}", STATUS).name == "alice"
    assert changes == [1]
    stats.clear()
    for _ in range(1000):
        clock.now += 0.001
        tokens.check(f"Bearer {secret}", STATUS)
    assert len(stats) == 2 and changes == [1]  # one stat per half second, unchanged: no re-read
    revoke_token(path, "alice")
    clock.now += 0.5
    with pytest.raises(Unauthenticated):
        tokens.check(f"Bearer {secret}", STATUS)
    assert changes == [1, 0]


def test_a_malformed_file_keeps_the_previous_tokens(tmp_path, caplog):
    path = tmp_path / "tokens.json"
    secret = create_token(path, "alice", "operator")
    clock = Clock()
    tokens = TokenFile(path, clock=clock)
    path.write_text("{not json")
    clock.now += 1
    assert tokens.check(f"Bearer {secret}", STATUS).name == "alice"
    assert "previous tokens stay in force" in caplog.text


def _status(channel: grpc.Channel, secret: str) -> grpc.StatusCode:
    try:
        apb_grpc.AdminServiceStub(channel).GetStatus(
            apb.GetStatusRequest(), metadata=[("authorization", f"Bearer {secret}")], timeout=5
        )
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _seconds_until(channel: grpc.Channel, secret: str, code: grpc.StatusCode, timeout: float = 3.0) -> float:
    start = time.monotonic()
    while _status(channel, secret) != code:
        assert time.monotonic() - start < timeout, f"not {code} after {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_created_and_revoked_tokens_take_effect_within_a_second_in_process(running):
    tokens_path = running.service.settings.tokens_path
    secret = create_token(tokens_path, "carol", "viewer")
    assert _seconds_until(running.admin, secret, grpc.StatusCode.OK) < 1.0
    revoke_token(tokens_path, "carol")
    assert _seconds_until(running.admin, secret, grpc.StatusCode.UNAUTHENTICATED) < 1.0
    assert _status(running.admin, running.operator_token) == grpc.StatusCode.OK  # the others stay


def _token(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*regionlock_command(), "token", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_cli_create_and_revoke_reach_a_multi_process_server_within_a_second(world, tmp_path):
    data_dir = str(world.data_dir)
    first = _token("create", "alice", "--role", "operator", "--data-dir", data_dir)
    assert first.returncode == 0, first.stderr
    server = start_server_process(world, tmp_path, "--workers", "2")
    try:
        with grpc.insecure_channel(server.admin_addr) as channel:
            assert _status(channel, first.stdout.strip()) == grpc.StatusCode.OK
            created = _token("create", "bob", "--role", "viewer", "--data-dir", data_dir)
            assert created.returncode == 0, created.stderr
            bob = created.stdout.strip()
            assert _seconds_until(channel, bob, grpc.StatusCode.OK) < 1.0
            listed = _token("list", "--data-dir", data_dir)
            assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
                ["alice", "operator"],
                ["bob", "viewer"],
            ]
            revoked = _token("revoke", "bob", "--data-dir", data_dir)
            assert revoked.returncode == 0, revoked.stderr
            assert _seconds_until(channel, bob, grpc.StatusCode.UNAUTHENTICATED) < 1.0
            assert _status(channel, first.stdout.strip()) == grpc.StatusCode.OK
            again = _token("revoke", "bob", "--data-dir", data_dir)
            assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
        log = server.log()
        assert bob not in log and first.stdout.strip() not in log
    finally:
        assert stop_server_process(server) == 0, server.log()
