"""DeviceCheckService: translates proto to decide() and back, for single, batch and streamed checks."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from regionlock.service import edge
from regionlock.service.decision import Decision, decide
from regionlock.service.errors import InvalidArgument, ServiceError, Unavailable
from regionlock.service.metrics import Metrics
from regionlock.service.snapshot import Snapshot, SnapshotHolder
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class DecisionIds:
    """Unique decision ids: a random per-process prefix and a counter (cheaper than a UUID per check)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):010x}"


def versions_message(snapshot: Snapshot) -> pb.DataVersions:
    v = snapshot.versions
    return pb.DataVersions(geo=v.geo, allowlist=v.allowlist, policy=v.policy, overrides_revision=v.overrides_revision)


class DeviceCheckServicer(pb_grpc.DeviceCheckServiceServicer):
    """The gateways' API; thin: one snapshot read per check, decide(), build the response."""

    def __init__(self, holder: SnapshotHolder, metrics: Metrics, max_batch: int, clock: Clock = utc_now):
        self.holder = holder
        self.metrics = metrics
        self.max_batch = max_batch
        self.clock = clock
        self.ids = DecisionIds()

    def _snapshot(self) -> Snapshot:
        snapshot = self.holder.current
        if snapshot is None:
            raise Unavailable("no data loaded yet; the server is starting")
        return snapshot

    def _response(self, request: pb.CheckDeviceRequest, decision: Decision, snapshot: Snapshot):
        response = pb.CheckDeviceResponse(
            request_id=request.request_id,
            verdict=decision.verdict,
            reason=decision.reason,
            rule_id=decision.rule_id,
            sold_market=decision.sold_market or "",
            enforced=decision.enforced,
            message=decision.message,
            cache_ttl_seconds=decision.cache_ttl_seconds,
            versions=versions_message(snapshot),
            decision_id=self.ids.next(),
        )
        region = decision.region
        if region is not None:
            response.region.country = region.country
            response.region.subdivision = region.subdivision or ""
            response.region.network = region.network or ""
        if decision.trace is not None:
            response.trace.extend(decision.trace)
        return response

    def _check(self, request: pb.CheckDeviceRequest, snapshot: Snapshot, now: datetime) -> pb.CheckDeviceResponse:
        decision = decide(snapshot, request.serial, request.ip, now, request.explain)
        return self._response(request, decision, snapshot)

    def _count(self, responses: list[pb.CheckDeviceResponse]) -> None:
        self.metrics.count_decisions((r.verdict, r.reason, r.enforced) for r in responses)

    @edge.unary("CheckDevice")
    def CheckDevice(self, request, context):
        response = self._check(request, self._snapshot(), self.clock())
        self._count([response])
        return response

    @edge.unary("CheckDevices")
    def CheckDevices(self, request, context):
        n = len(request.checks)
        if n > self.max_batch:
            raise InvalidArgument("checks", f"at most {self.max_batch} items per call, got {n}")
        self.metrics.batch_size.observe(n)
        snapshot, now = self._snapshot(), self.clock()
        results, decided = [], []
        for item in request.checks:
            try:
                response = self._check(item, snapshot, now)
            except ServiceError as exc:
                self.metrics.item_errors.labels(exc.code).inc()
                results.append(pb.CheckDeviceResult(request_id=item.request_id, error=edge.status_message(exc)))
            else:
                decided.append(response)
                results.append(pb.CheckDeviceResult(request_id=item.request_id, response=response))
        self._count(decided)
        return pb.CheckDevicesResponse(results=results)

    @edge.streaming("StreamCheckDevices")
    def StreamCheckDevices(self, request_iterator, context) -> Iterator[pb.CheckDeviceResponse]:
        for request in request_iterator:
            try:
                response = self._check(request, self._snapshot(), self.clock())
            except ServiceError as exc:
                self.metrics.item_errors.labels(exc.code).inc()
                yield pb.CheckDeviceResponse(request_id=request.request_id, error=edge.status_message(exc))
            else:
                self._count([response])
                yield response
