"""The audit trail records reloads (who, versions before and after, result) and token changes (never a secret)."""

from __future__ import annotations

import grpc
import pytest

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.service.server.auth import create_token, revoke_token
from regionlock.service.server.lifecycle import SIGNAL_ACTOR, TOKEN_FILE_ACTOR, reload_in_background

from support.postgres import wait_until


def _events(running) -> list[apb.AuditEvent]:
    stub = apb_grpc.AdminServiceStub(running.admin)
    return list(stub.ListAuditEvents(apb.ListAuditEventsRequest(), metadata=running.auth(), timeout=5).events)


def _of(running, action: str) -> list[apb.AuditEvent]:
    return [e for e in _events(running) if e.action == action]


def test_tokens_in_the_file_at_start_are_recorded_once(running):
    assert wait_until(lambda: len(_of(running, "token_create")) == 2, 3)
    created = _of(running, "token_create")
    assert {(e.details["name"], e.details["role"]) for e in created} == {("alice", "operator"), ("victor", "viewer")}
    assert {e.actor for e in created} == {TOKEN_FILE_ACTOR} and {e.serial for e in created} == {""}
    running.service._audit_tokens([("token_create", e) for e in running.service.auth.tokens.store.entries])
    running.service.auth.tokens.reload()
    assert not wait_until(lambda: len(_of(running, "token_create")) > 2, 1)  # once, however often noticed


def test_token_creation_and_revocation_are_recorded_without_the_secret(running):
    path = running.service.settings.tokens_path
    secret = create_token(path, "carol", "operator")
    assert wait_until(lambda: any(e.details["name"] == "carol" for e in _of(running, "token_create")), 3)
    revoke_token(path, "carol")
    assert wait_until(lambda: any(e.details["name"] == "carol" for e in _of(running, "token_revoke")), 3)
    (revoked,) = _of(running, "token_revoke")
    assert dict(revoked.details) == {
        "name": "carol",
        "role": "operator",
        "token_id": secret.split("_")[1],  # the id, not secret: it names the entry
        "file": str(path),
    }
    assert secret not in str(_events(running)) and secret.rsplit("_", 1)[1] not in str(_events(running))


def test_reload_data_records_who_versions_before_and_after_and_the_result(running):
    stub = apb_grpc.AdminServiceStub(running.admin)
    before = running.service.holder.current.versions
    stub.ReloadData(apb.ReloadDataRequest(), metadata=running.auth(), timeout=10)
    (ok,) = _of(running, "reload")
    assert ok.actor == "alice" and ok.details["result"] == "ok" and ok.details["error"] == ""
    assert ok.details["geo_before"] == before.geo and ok.details["policy_before"] == before.policy
    after = running.service.holder.current.versions
    assert (ok.details["allowlist_after"], ok.details["policy_after"]) == (after.allowlist, after.policy)

    running.service.settings.policy_path.write_text("mode = 'nonsense'\n")
    with pytest.raises(grpc.RpcError) as info:
        stub.ReloadData(apb.ReloadDataRequest(), metadata=running.auth(), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    failed = _of(running, "reload")[0]
    assert failed.details["result"] == "failed" and "policy" in failed.details["error"]
    assert failed.details["policy_before"] == after.policy and "policy_after" not in failed.details


def test_a_reload_by_signal_is_recorded_with_the_signal_as_actor(running):
    reload_in_background(running.service)
    assert wait_until(lambda: [e.actor for e in _of(running, "reload")] == [SIGNAL_ACTOR], 5)
