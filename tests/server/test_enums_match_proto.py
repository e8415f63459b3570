"""The domain's Verdict and Reason are the proto's enums: same members, same numbers, both ways."""

import enum

import pytest
from google.protobuf.descriptor import EnumDescriptor

from regionlock.service.decision import Reason, Verdict
from regionlock.v1 import device_check_pb2 as pb


@pytest.mark.parametrize(
    ("domain", "proto", "prefix"),
    [(Verdict, pb.Verdict.DESCRIPTOR, "VERDICT_"), (Reason, pb.Reason.DESCRIPTOR, "REASON_")],
    ids=["Verdict", "Reason"],
)
def test_domain_enum_is_the_proto_enum(domain: type[enum.IntEnum], proto: EnumDescriptor, prefix: str):
    wire = {value.name: value.number for value in proto.values}
    assert all(name.startswith(prefix) for name in wire)
    # proto3's zero value means "not set" and is never sent; the domain has no such member, nor a 0
    assert wire.pop(prefix + "UNSPECIFIED") == 0
    assert 0 not in {member.value for member in domain}
    stripped = {name.removeprefix(prefix): number for name, number in wire.items()}
    ours = {member.name: member.value for member in domain}
    assert ours == stripped  # each of ours on the wire, each of the wire's (but the zero) ours
    assert len(set(ours.values())) == len(ours)  # no aliases: a number means one member
