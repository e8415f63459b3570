"""Replicas of a test fleet: one `regionlock serve` process each, with stubs of its listeners."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.postgres import TcpProxy
from support.postgres import wait_until as wait_until  # re-exported: the replica tests take it from here
from support.service import IP_BERLIN, ServerProcess

REPLICAS = 3
# Polling alone would take up to this long: propagation well under it shows LISTEN/NOTIFY at work.
POLL_SECONDS = 2.0


@dataclass
class Replica:
    """One serving process and stubs of its two listeners."""

    process: ServerProcess
    token: str
    channels: list[grpc.Channel] = field(default_factory=list)

    def __post_init__(self) -> None:
        check = grpc.insecure_channel(self.process.check_addr)
        admin = grpc.insecure_channel(self.process.admin_addr)
        self.channels = [check, admin]
        self.check = pb_grpc.DeviceCheckServiceStub(check)
        self.health = health_pb2_grpc.HealthStub(check)
        self.admin = apb_grpc.AdminServiceStub(admin)

    @property
    def auth(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]

    def verdict(self, serial: str, ip: str = IP_BERLIN) -> pb.CheckDeviceResponse:
        return self.check.CheckDevice(pb.CheckDeviceRequest(serial=serial, ip=ip), timeout=5)

    def set(self, serial: str, reason: str, action=apb.OVERRIDE_ACTION_UNLOCK, timeout: float = 10):
        request = apb.SetOverrideRequest(serial=serial, action=action, reason=reason)
        return self.admin.SetOverride(request, metadata=self.auth, timeout=timeout)

    def get(self, serial: str) -> apb.Override:
        return self.admin.GetOverride(apb.GetOverrideRequest(serial=serial), metadata=self.auth, timeout=5).override

    def status(self) -> apb.GetStatusResponse:
        return self.admin.GetStatus(apb.GetStatusRequest(), metadata=self.auth, timeout=5)

    def check_health(self) -> int:
        request = health_pb2.HealthCheckRequest(service="regionlock.v1.DeviceCheckService")
        return self.health.Check(request, timeout=5).status

    def audit(self, serial: str = "") -> list[apb.AuditEvent]:
        """Every audit event (of `serial`), newest first."""
        events, token = [], ""
        while True:
            request = apb.ListAuditEventsRequest(serial=serial, page_size=1000, page_token=token)
            page = self.admin.ListAuditEvents(request, metadata=self.auth, timeout=10)
            events += page.events
            token = page.next_page_token
            if not token:
                return events

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


@dataclass
class Fleet:
    replicas: list[Replica]
    proxy: TcpProxy
    schema: str
