"""AdminService end to end through real channels: overrides reach the check path, audit, auth, reload, status."""

import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.service import IP_BERLIN, IP_CRIMEA


def _admin(running):
    return apb_grpc.AdminServiceStub(running.admin)


def _check(running, serial, ip=IP_CRIMEA):
    return pb_grpc.DeviceCheckServiceStub(running.check).CheckDevice(
        pb.CheckDeviceRequest(serial=serial, ip=ip), timeout=5
    )


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _unlock(serial, reason="support case", **kw):
    return apb.SetOverrideRequest(serial=serial, action=apb.OVERRIDE_ACTION_UNLOCK, reason=reason, **kw)


def test_unlock_reaches_the_check_path_at_once(running):
    assert _check(running, "EEA-0001").reason == pb.REASON_REGION_RESTRICTED
    response = _admin(running).SetOverride(_unlock("eea-0001", ticket="SUP-1"), metadata=running.auth(), timeout=5)
    assert response.override.serial == "EEA-0001"
    assert response.override.actor == "alice"
    assert response.revision >= 1
    after = _check(running, "EEA-0001")
    assert (after.verdict, after.reason) == (pb.VERDICT_ALLOW, pb.REASON_OVERRIDE_UNLOCK)
    assert after.versions.overrides_revision == response.revision
    got = _admin(running).GetOverride(apb.GetOverrideRequest(serial="EEA-0001"), metadata=running.auth(), timeout=5)
    assert got.override.ticket == "SUP-1"

    lock = apb.SetOverrideRequest(serial="EEA-0001", action=apb.OVERRIDE_ACTION_LOCK, reason="stolen")
    _admin(running).SetOverride(lock, metadata=running.auth(), timeout=5)
    assert _check(running, "EEA-0001", IP_BERLIN).reason == pb.REASON_OVERRIDE_LOCK

    deleted = _admin(running).DeleteOverride(
        apb.DeleteOverrideRequest(serial="EEA-0001", reason="found"), metadata=running.auth(), timeout=5
    )
    assert deleted.revision > response.revision
    assert _check(running, "EEA-0001").reason == pb.REASON_REGION_RESTRICTED
    with pytest.raises(grpc.RpcError) as info:
        _admin(running).GetOverride(apb.GetOverrideRequest(serial="EEA-0001"), metadata=running.auth(), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_setting_twice_leaves_one_override_and_two_audit_events(running):
    admin = _admin(running)
    first = admin.SetOverride(_unlock("CN-0001"), metadata=running.auth(), timeout=5)
    second = admin.SetOverride(_unlock("CN-0001"), metadata=running.auth(), timeout=5)
    assert second.override.revision == first.override.revision
    listed = admin.ListOverrides(apb.ListOverridesRequest(), metadata=running.auth(), timeout=5)
    assert [o.serial for o in listed.overrides] == ["CN-0001"]
    events = admin.ListAuditEvents(
        apb.ListAuditEventsRequest(serial="CN-0001"), metadata=running.auth(), timeout=5
    ).events
    assert [e.action for e in events] == ["set_unchanged", "set"]
    assert not events[1].HasField("before")
    assert events[1].after.action == apb.OVERRIDE_ACTION_UNLOCK
    assert {e.actor for e in events} == {"alice"}


def test_list_overrides_pages_and_filters(running):
    admin = _admin(running)
    items = [_unlock(f"PAGE-{i:03d}") for i in range(25)]
    items += [
        apb.SetOverrideRequest(serial=f"LOCK-{i:03d}", action=apb.OVERRIDE_ACTION_LOCK, reason="r") for i in range(5)
    ]
    admin.BulkSetOverrides(apb.BulkSetOverridesRequest(items=items), metadata=running.auth(), timeout=10)
    seen, token = [], ""
    while True:
        page = admin.ListOverrides(
            apb.ListOverridesRequest(page_size=7, page_token=token, action=apb.OVERRIDE_ACTION_UNLOCK),
            metadata=running.auth(),
            timeout=5,
        )
        seen += [o.serial for o in page.overrides]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(f"PAGE-{i:03d}" for i in range(25))
    with pytest.raises(grpc.RpcError) as info:
        admin.ListOverrides(apb.ListOverridesRequest(page_token="tampered"), metadata=running.auth(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in info.value.details()


def test_bulk_dry_run_then_write_all_or_nothing(running):
    admin = _admin(running)
    items = [_unlock(f"BULK-{i:05d}") for i in range(2000)]
    preview = admin.BulkSetOverrides(
        apb.BulkSetOverridesRequest(items=items, dry_run=True), metadata=running.auth(), timeout=30
    )
    assert (preview.created, preview.changed, preview.unchanged) == (2000, 0, 0)
    assert running.service.store.get("BULK-00000") is None
    done = admin.BulkSetOverrides(apb.BulkSetOverridesRequest(items=items), metadata=running.auth(), timeout=30)
    assert (done.created, done.changed, done.unchanged) == (2000, 0, 0)
    assert _check(running, "BULK-01999").reason == pb.REASON_OVERRIDE_UNLOCK
    again = admin.BulkSetOverrides(
        apb.BulkSetOverridesRequest(items=[*items[:10], _unlock("BULK-00010", reason="other")], dry_run=True),
        metadata=running.auth(),
        timeout=30,
    )
    assert (again.created, again.changed, again.unchanged) == (0, 1, 10)

    bad = [_unlock("GOOD-1"), _unlock("GOOD-2"), apb.SetOverrideRequest(serial="GOOD-3", reason="no action")]
    with pytest.raises(grpc.RpcError) as info:
        admin.BulkSetOverrides(apb.BulkSetOverridesRequest(items=bad), metadata=running.auth(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[2].action" in info.value.details()
    assert running.service.store.get("GOOD-1") is None


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (apb.SetOverrideRequest(serial="A-1", action=apb.OVERRIDE_ACTION_UNLOCK), "reason"),
        (apb.SetOverrideRequest(serial="A-1", action=apb.OVERRIDE_ACTION_UNLOCK, reason="x" * 501), "reason"),
        (apb.SetOverrideRequest(serial="A-1", reason="r"), "action"),
        (apb.SetOverrideRequest(serial="A-1", action=7, reason="r"), "action"),
        (apb.SetOverrideRequest(serial="bad serial", action=apb.OVERRIDE_ACTION_LOCK, reason="r"), "serial"),
        (
            apb.SetOverrideRequest(
                serial="A-1",
                action=apb.OVERRIDE_ACTION_LOCK,
                reason="r",
                expire_time=_ts(datetime.now(UTC) - timedelta(minutes=1)),
            ),
            "expire_time",
        ),
    ],
)
def test_set_override_validation(running, request_, field):
    with pytest.raises(grpc.RpcError) as info:
        _admin(running).SetOverride(request_, metadata=running.auth(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: ")


def test_short_expiry_stops_applying(running):
    expire = datetime.now(UTC) + timedelta(seconds=1)
    _admin(running).SetOverride(_unlock("GLOBAL-0001", expire_time=_ts(expire)), metadata=running.auth(), timeout=5)
    assert _check(running, "GLOBAL-0001").reason == pb.REASON_OVERRIDE_UNLOCK
    time.sleep(max(0.0, (expire - datetime.now(UTC)).total_seconds()) + 0.05)
    assert _check(running, "GLOBAL-0001").reason == pb.REASON_REGION_RESTRICTED


def test_auth(running):
    admin = _admin(running)
    status = apb.GetStatusRequest()
    for metadata, code in [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", "Bearer rl_nope_nope")], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", running.operator_token)], grpc.StatusCode.UNAUTHENTICATED),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            admin.GetStatus(status, metadata=metadata, timeout=5)
        assert info.value.code() == code
    assert admin.GetStatus(status, metadata=running.auth(running.viewer_token), timeout=5).serials == 4
    with pytest.raises(grpc.RpcError) as info:
        admin.SetOverride(_unlock("A-1"), metadata=running.auth(running.viewer_token), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        admin.ReloadData(apb.ReloadDataRequest(), metadata=running.auth(running.viewer_token), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_status_and_reload(running, world, tmp_path):
    import os

    admin = _admin(running)
    status = admin.GetStatus(apb.GetStatusRequest(), metadata=running.auth(), timeout=5)
    assert (status.serials, status.mode, status.reloads_ok, status.reloads_failed) == (4, "enforce", 1, 0)
    assert status.networks >= 7
    assert status.versions.geo == running.service.holder.current.geo.build_id
    reloaded = admin.ReloadData(apb.ReloadDataRequest(), metadata=running.auth(), timeout=30)
    assert reloaded.versions.geo == status.versions.geo
    broken = tmp_path / "broken.toml"
    broken.write_text('mode = "sometimes"\n')
    os.replace(broken, world.policy_path)
    with pytest.raises(grpc.RpcError) as info:
        admin.ReloadData(apb.ReloadDataRequest(), metadata=running.auth(), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "mode" in info.value.details()
    after = admin.GetStatus(apb.GetStatusRequest(), metadata=running.auth(), timeout=5)
    assert (after.reloads_ok, after.reloads_failed) == (2, 1)
    assert after.versions.policy == status.versions.policy
    assert _check(running, "EEA-0001").reason == pb.REASON_REGION_RESTRICTED


def test_reload_of_a_deeply_nested_header_is_refused_and_counted(running, world, tmp_path):
    import os
    import urllib.request

    from regionlock.core.geo import FORMAT_VERSION, MAGIC

    from support.geo import write_nested_header

    admin = _admin(running)
    before = admin.GetStatus(apb.GetStatusRequest(), metadata=running.auth(), timeout=5)
    os.replace(write_nested_header(tmp_path / "deep.rlgeo", MAGIC, FORMAT_VERSION), world.geo_path)
    with pytest.raises(grpc.RpcError) as info:
        admin.ReloadData(apb.ReloadDataRequest(), metadata=running.auth(), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "metadata nested deeper than 32" in info.value.details()
    after = admin.GetStatus(apb.GetStatusRequest(), metadata=running.auth(), timeout=5)
    assert (after.reloads_ok, after.reloads_failed) == (before.reloads_ok, before.reloads_failed + 1)
    assert after.versions.geo == before.versions.geo
    with urllib.request.urlopen(f"http://127.0.0.1:{running.service.metrics_port}/metrics", timeout=5) as reply:
        assert 'regionlock_reloads_total{result="failed"} 1.0' in reply.read().decode()
    assert _check(running, "EEA-0001").reason == pb.REASON_REGION_RESTRICTED  # the old data keeps serving
