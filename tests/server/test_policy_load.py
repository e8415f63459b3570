"""A policy is checked against the data it serves with, at start and on reload: a refused one keeps the old data."""

import os
import subprocess

import grpc
import pytest

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.service.errors import FailedPrecondition
from regionlock.service.snapshot import load_data
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.allowlist import build_allowlist_from_rows
from support.geo import build_geo_from_rows
from support.service import ALLOWLIST_ROWS, GEO_ROWS, IP_CRIMEA, policy_text, serve_command, write_world

# what a country-level source (GeoLite2-Country, DB-IP, IPinfo, RIR data) makes of the small world: no subdivisions
COUNTRY_ONLY_ROWS = [(network, country, None) for network, country, _ in GEO_ROWS]


def _reload(running):
    return apb_grpc.AdminServiceStub(running.admin).ReloadData(
        apb.ReloadDataRequest(), metadata=running.auth(), timeout=30
    )


def _check(running, serial, ip):
    return pb_grpc.DeviceCheckServiceStub(running.check).CheckDevice(
        pb.CheckDeviceRequest(serial=serial, ip=ip), timeout=5
    )


def test_reload_refuses_a_rule_the_new_region_database_cant_match(running, world, tmp_path):
    before = _check(running, "EEA-0001", IP_CRIMEA)
    assert before.reason == pb.REASON_REGION_RESTRICTED
    os.replace(build_geo_from_rows(tmp_path, COUNTRY_ONLY_ROWS), world.geo_path)
    with pytest.raises(grpc.RpcError) as info:
        _reload(running)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details()
    assert "restricted[0].regions: UA-40, UA-43 never occur in" in details
    assert "allow_absent_regions = true" in details
    kept = _check(running, "EEA-0001", IP_CRIMEA)  # the old data keeps serving
    assert (kept.reason, kept.versions.geo) == (pb.REASON_REGION_RESTRICTED, before.versions.geo)
    status = apb_grpc.AdminServiceStub(running.admin).GetStatus(
        apb.GetStatusRequest(), metadata=running.auth(), timeout=5
    )
    assert (status.reloads_failed, status.last_reload_error) == (1, details)
    # the rule's author accepts it explicitly: the policy loads, and Crimea is no longer told apart from Ukraine
    world.policy_path.write_text(
        policy_text().replace('id = "sanctions"', 'id = "sanctions"\nallow_absent_regions = true')
    )
    reloaded = _reload(running)
    assert reloaded.versions.geo != before.versions.geo
    assert running.service.holder.last_error == ""
    after = _check(running, "EEA-0001", IP_CRIMEA)
    assert after.reason == pb.REASON_GRAY_IMPORT


def test_reload_refuses_an_allowlist_market_the_policy_doesnt_define(running, world, tmp_path):
    before = _check(running, "EEA-0001", IP_CRIMEA)
    os.replace(build_allowlist_from_rows(tmp_path, [*ALLOWLIST_ROWS, ("BR-0001", "BR")]), world.allowlist_path)
    with pytest.raises(grpc.RpcError) as info:
        _reload(running)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "markets: BR (of the allowlist" in info.value.details()
    assert _check(running, "EEA-0001", IP_CRIMEA).versions.allowlist == before.versions.allowlist
    world.policy_path.write_text(policy_text().replace("[actions]", 'BR = ["BR"]\n[actions]'))
    assert _reload(running).versions.allowlist != before.versions.allowlist


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        (
            policy_text().replace('"CU", ', '"UK", '),
            "restricted[0].regions[0]: UK is not an ISO 3166 code: did you mean GB?",
        ),
        ("\n".join(line for line in policy_text().splitlines() if not line.startswith("US =")), "markets: US (of the"),
    ],
)
def test_load_data_names_the_problem(tmp_path, policy, named):
    settings = write_world(tmp_path / "w")
    settings.policy_path.write_text(policy)
    with pytest.raises(FailedPrecondition) as info:
        load_data(settings)
    assert named in info.value.message


def test_serve_does_not_start_on_a_policy_its_data_cant_match(tmp_path):
    settings = write_world(tmp_path / "w")
    os.replace(build_geo_from_rows(tmp_path, COUNTRY_ONLY_ROWS), settings.geo_path)
    args = serve_command(settings, "127.0.0.1:0", "127.0.0.1:0", "")
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "UA-40, UA-43 never occur in" in result.stderr
