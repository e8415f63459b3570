"""A client's mistake is INVALID_ARGUMENT naming the field, never INTERNAL, on SQLite and on PostgreSQL.

Undecodable request bytes, timestamps outside 0001..9999, forged or foreign page tokens, and NUL characters
in text PostgreSQL can't store: each through a real server on port 0 and a real channel.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator

import grpc
import pytest

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.service.overrides.store import encode_page_token
from regionlock.service.server.auth import create_token

from support.postgres import private_schema, require_postgres, store_url

ADMIN = "/regionlock.admin.v1.AdminService/"
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z


@dataclasses.dataclass
class Admin:
    service: object
    channel: grpc.Channel
    stub: apb_grpc.AdminServiceStub
    token: str

    @property
    def auth(self):
        return [("authorization", f"Bearer {self.token}")]

    def raw(self, method: str):
        return self.channel.unary_unary(ADMIN + method, request_serializer=lambda b: b, response_deserializer=bytes)


@pytest.fixture(params=["sqlite", "postgresql"])
def admin(request, world) -> Iterator[Admin]:
    from regionlock.service.server.lifecycle import Service

    token = create_token(world.tokens_path, "alice", "operator")
    with private_schema() as schema:
        settings = world
        if request.param == "postgresql":
            require_postgres()
            settings = dataclasses.replace(world, store=store_url(schema))
        service = Service(settings)
        service.start()
        service.reload()
        channel = grpc.insecure_channel(f"127.0.0.1:{service.admin_port}")
        try:
            yield Admin(service, channel, apb_grpc.AdminServiceStub(channel), token)
        finally:
            channel.close()
            service.stop(0)


def _invalid(call, *args, **kw) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10, **kw)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details()


def _set(serial="EEA-0001", reason="support case", **kw) -> apb.SetOverrideRequest:
    return apb.SetOverrideRequest(serial=serial, action=apb.OVERRIDE_ACTION_UNLOCK, reason=reason, **kw)


@pytest.mark.parametrize("method", ["SetOverride", "ListOverrides", "ListAuditEvents", "BulkSetOverrides"])
@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08" + b"\xff" * 11])
def test_undecodable_request_bytes(admin, method, garbage):
    assert "request" in _invalid(admin.raw(method), garbage, metadata=admin.auth)


def test_undecodable_bytes_without_a_token_are_still_unauthenticated(admin):
    with pytest.raises(grpc.RpcError) as info:
        admin.raw("SetOverride")(b"\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (MAX_SECONDS + 1, 0),
        (2**62, 0),
        (MIN_SECONDS - 1, 0),
        (-(2**62), 0),
        (4_000_000_000, -1),
        (4_000_000_000, 10**9),
    ],
)
def test_expire_time_outside_what_a_timestamp_holds(admin, seconds, nanos):
    expire = {"expire_time": {"seconds": seconds, "nanos": nanos}}
    details = _invalid(admin.stub.SetOverride, _set(**expire), metadata=admin.auth)
    assert details.startswith("expire_time:"), details
    bulk = apb.BulkSetOverridesRequest(items=[_set("CN-0001"), _set(**expire)])
    assert _invalid(admin.stub.BulkSetOverrides, bulk, metadata=admin.auth).startswith("items[1].expire_time:")


def test_expire_time_at_the_end_of_year_9999_is_stored(admin):
    expire = {"expire_time": {"seconds": MAX_SECONDS, "nanos": 999_999_000}}
    stored = admin.stub.SetOverride(_set(**expire), metadata=admin.auth, timeout=10).override
    assert stored.expire_time.seconds == MAX_SECONDS
    got = admin.stub.GetOverride(apb.GetOverrideRequest(serial="EEA-0001"), metadata=admin.auth, timeout=10)
    assert got.override.expire_time == stored.expire_time


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("reason", _set(reason="stolen\x00")),
        ("ticket", _set(ticket="SUP\x00-1")),
        ("serial", _set(serial="EEA\x00-0001")),
    ],
)
def test_nul_characters_in_text(admin, field, request_):
    assert _invalid(admin.stub.SetOverride, request_, metadata=admin.auth).startswith(f"{field}:")
    bulk = apb.BulkSetOverridesRequest(items=[request_])
    assert _invalid(admin.stub.BulkSetOverrides, bulk, metadata=admin.auth).startswith(f"items[0].{field}:")
    assert admin.stub.ListOverrides(apb.ListOverridesRequest(), metadata=admin.auth, timeout=10).overrides == []


def test_nul_characters_in_delete_and_audit_filter(admin):
    admin.stub.SetOverride(_set(), metadata=admin.auth, timeout=10)
    for request_, field in [
        (apb.DeleteOverrideRequest(serial="EEA-0001", reason="found\x00"), "reason"),
        (apb.DeleteOverrideRequest(serial="EEA-0001", reason="found", ticket="\x00"), "ticket"),
        (apb.DeleteOverrideRequest(serial="EEA-0001\x00", reason="found"), "serial"),
    ]:
        assert _invalid(admin.stub.DeleteOverride, request_, metadata=admin.auth).startswith(f"{field}:")
    audit = apb.ListAuditEventsRequest(serial="EEA\x00")
    assert _invalid(admin.stub.ListAuditEvents, audit, metadata=admin.auth).startswith("serial:")
    assert admin.stub.GetOverride(apb.GetOverrideRequest(serial="EEA-0001"), metadata=admin.auth, timeout=10)


def _fill(admin: Admin) -> None:
    items = [_set(f"S-{i:02d}") for i in range(5)]
    admin.stub.BulkSetOverrides(apb.BulkSetOverridesRequest(items=items), metadata=admin.auth, timeout=10)


def test_page_tokens_signed_with_another_key_are_refused(admin):
    _fill(admin)
    page = admin.stub.ListOverrides(apb.ListOverridesRequest(page_size=2), metadata=admin.auth, timeout=10)
    assert page.next_page_token  # the genuine one works
    admin.stub.ListOverrides(
        apb.ListOverridesRequest(page_size=2, page_token=page.next_page_token), metadata=admin.auth, timeout=10
    )
    filters = {"action": None, "include_expired": False}
    forged = [
        # the fixed key every build used to share: anyone could read it in the source
        encode_page_token(b"regionlock.page-token.v1", "overrides", filters, "S-01"),
        encode_page_token(secrets.token_bytes(32), "overrides", filters, "S-01"),  # another deployment's
    ]
    for token in forged:
        details = _invalid(admin.stub.ListOverrides, apb.ListOverridesRequest(page_token=token), metadata=admin.auth)
        assert details.startswith("page_token:")
    audit = encode_page_token(secrets.token_bytes(32), "audit", {"serial": ""}, 3)
    details = _invalid(admin.stub.ListAuditEvents, apb.ListAuditEventsRequest(page_token=audit), metadata=admin.auth)
    assert details.startswith("page_token:")


@pytest.mark.parametrize("position", [{"serial": "x"}, ["S"], 7, None, "S\x00", "x" * 65])
def test_a_page_token_with_a_position_of_the_wrong_kind_is_refused_even_when_signed(admin, position):
    """What a leaked key would allow: the position never reaches the SQL unchecked."""
    key = admin.service.store._page_key
    token = encode_page_token(key, "overrides", {"action": None, "include_expired": False}, position)
    details = _invalid(admin.stub.ListOverrides, apb.ListOverridesRequest(page_token=token), metadata=admin.auth)
    assert details.startswith("page_token:")


@pytest.mark.parametrize("position", ["12", 0, -1, 2**63, 1.5, True, {"id": 1}])
def test_an_audit_page_token_with_a_bad_position_is_refused_even_when_signed(admin, position):
    token = encode_page_token(admin.service.store._page_key, "audit", {"serial": ""}, position)
    details = _invalid(admin.stub.ListAuditEvents, apb.ListAuditEventsRequest(page_token=token), metadata=admin.auth)
    assert details.startswith("page_token:")
