"""DeviceCheckService: translates proto to decide() and back, for single, batch and streamed checks.

CheckDevices takes and returns wire bytes: the batch kernel (batch_kernel.pyx) reads the request, decides the
items from an outcome table (tables.py) and writes the response, with no Python object per item; the
items it can't decide (invalid, explain, a live override) are decided here by decide(). The pure-Python path,
check_devices_reference(), is its differential twin.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from typing import cast

import grpc

from regionlock.service.decision import Decision, decide
from regionlock.service.errors import InvalidArgument, ResourceExhausted, ServiceError, Unavailable
from regionlock.service.overrides.index import OverrideIndex
from regionlock.service.overrides.model import Override
from regionlock.service.server import edge
from regionlock.service.server.check import batch_kernel
from regionlock.service.server.check.tables import TableCache
from regionlock.service.server.metrics import Metrics
from regionlock.service.snapshot import Snapshot, SnapshotHolder
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

Clock = Callable[[], datetime]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DeviceCheckService"].full_name


def utc_now() -> datetime:
    return datetime.now(UTC)


class DecisionIds:
    """Unique decision ids: a random per-process prefix and a counter (cheaper than a UUID per check)."""

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex()
        self._next = 1
        self._lock = threading.Lock()

    def reserve(self, n: int) -> int:
        """The first of n consecutive counters, for the ids of a batch (see format)."""
        with self._lock:
            first = self._next
            self._next += n
        return first

    def format(self, counter: int) -> str:
        return f"{self.prefix}-{counter:010x}"

    def next(self) -> str:
        return self.format(self.reserve(1))


def versions_message(snapshot: Snapshot) -> pb.DataVersions:
    v = snapshot.versions
    return pb.DataVersions(geo=v.geo, allowlist=v.allowlist, policy=v.policy, overrides_revision=v.overrides_revision)


class DeviceCheckServicer(pb_grpc.DeviceCheckServiceServicer):
    """The gateways' API; thin: one snapshot read per check, decide(), build the response."""

    def __init__(
        self, holder: SnapshotHolder, metrics: Metrics, max_batch: int, clock: Clock = utc_now, max_streams: int = 64
    ):
        self.holder = holder
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_streams = max_streams
        self._stream_slots = threading.BoundedSemaphore(max_streams)
        self.clock = clock
        self.ids = DecisionIds()
        self._id_prefix = f"{self.ids.prefix}-".encode()
        self._tables = TableCache()
        self._versions: tuple[Snapshot | None, bytes] = (None, b"")
        self._overrides: tuple[OverrideIndex | None, dict[str, Override]] = (None, {})

    def _snapshot(self) -> Snapshot:
        snapshot = self.holder.current
        if snapshot is None:
            raise Unavailable("no data loaded yet; the server is starting")
        return snapshot

    def _response(
        self, request_id: str, decision: Decision, snapshot: Snapshot, decision_id: str | None = None
    ) -> pb.CheckDeviceResponse:
        response = pb.CheckDeviceResponse(
            request_id=request_id,
            # the domain's IntEnums hold the proto's numbers; protoc's .pyi knows only its own enum classes
            verdict=cast("pb.Verdict", decision.verdict),
            reason=cast("pb.Reason", decision.reason),
            rule_id=decision.rule_id,
            sold_market=decision.sold_market or "",
            enforced=decision.enforced,
            message=decision.message,
            cache_ttl_seconds=decision.cache_ttl_seconds,
            versions=versions_message(snapshot),
            decision_id=decision_id or self.ids.next(),
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
        return self._response(request.request_id, decision, snapshot)

    def _count(self, responses: list[pb.CheckDeviceResponse]) -> None:
        self.metrics.count_decisions((r.verdict, r.reason, r.enforced) for r in responses)

    def check_device_reference(self, request: pb.CheckDeviceRequest) -> pb.CheckDeviceResponse:
        """CheckDevice through protobuf objects and decide(): the fast path's differential twin."""
        response = self._check(request, self._snapshot(), self.clock())
        self.metrics.count_decision(response.verdict, response.reason, response.enforced)
        return response

    def check_device_fast(self, request: bytes) -> bytes:
        """CheckDevice from wire bytes to wire bytes: the kernel decides the request in one call.

        The handler's own Python is what a unary call costs beyond the transport, so the common case builds
        no protobuf object and makes few calls; an item the kernel leaves to Python (invalid, explain, a live
        override) takes the reference path.
        """
        snapshot = self._snapshot()
        table = self._tables.get(snapshot)
        overrides = self._override_dict(snapshot.overrides) if len(snapshot.overrides) else None
        try:
            decided = batch_kernel.check_one(
                request,
                snapshot.geo,
                snapshot.allowlist,
                table.kernel,
                self._versions_field(snapshot),
                self._id_prefix,
                self.ids.reserve(1),
                overrides,
                self.clock() if overrides else None,
            )
        except ValueError as exc:
            raise InvalidArgument("request", f"not a valid CheckDeviceRequest: {exc}") from None
        if decided is None:
            return self.check_device_reference(pb.CheckDeviceRequest.FromString(request)).SerializeToString()
        response, index = decided
        outcome = table.outcomes[index]
        self.metrics.count_decision(outcome.verdict, outcome.reason, outcome.enforced)
        return response

    def _too_many(self) -> InvalidArgument:
        # "got more", not a count: the parse stops at the first item over the limit (counting the rest of a
        # 64 MiB request of empty items would cost what the limit saves)
        return InvalidArgument("checks", f"at most {self.max_batch} items per call, got more")

    def _check_batch_size(self, n: int) -> None:
        if n > self.max_batch:
            raise self._too_many()
        self.metrics.batch_size.observe(n)

    def check_devices_reference(self, request: pb.CheckDevicesRequest) -> pb.CheckDevicesResponse:
        """CheckDevices through protobuf objects and decide() per item: the fast path's differential twin."""
        self._check_batch_size(len(request.checks))
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

    def check_devices_fast(self, request: bytes) -> bytes:
        """CheckDevices from wire bytes to wire bytes through the batch kernel."""
        try:
            batch = batch_kernel.Batch(request, self.max_batch)
        except batch_kernel.TooManyItems:
            raise self._too_many() from None
        except ValueError as exc:
            raise InvalidArgument("request", f"not a valid CheckDevicesRequest: {exc}") from None
        n = len(batch)
        self._check_batch_size(n)
        snapshot, now = self._snapshot(), self.clock()
        table = self._tables.get(snapshot)
        batch.look_up(snapshot.geo, snapshot.allowlist)
        if len(snapshot.overrides):
            batch.apply_overrides(self._override_dict(snapshot.overrides), now)
        first_id = self.ids.reserve(n)
        slow: list[bytes] = []
        totals: Counter[tuple[int, int, bool]] = Counter()
        errors: Counter[str] = Counter()
        for i in batch.slow_items():
            serial, ip, request_id, explain = batch.item(i)
            try:
                decision = decide(snapshot, serial, ip, now, explain)
            except ServiceError as exc:
                errors[exc.code] += 1
                result = pb.CheckDeviceResult(request_id=request_id, error=edge.status_message(exc))
            else:
                totals[(decision.verdict, decision.reason, decision.enforced)] += 1
                checked = self._response(request_id, decision, snapshot, self.ids.format(first_id + i))
                result = pb.CheckDeviceResult(request_id=request_id, response=checked)
            slow.append(result.SerializeToString())
        response = batch.encode(table.kernel, self._versions_field(snapshot), self._id_prefix, first_id, slow)
        for outcome, count in zip(table.outcomes, batch.outcome_counts(), strict=True):
            if count:
                totals[(outcome.verdict, outcome.reason, outcome.enforced)] += count
        self.metrics.count_decision_totals(totals)
        for code, count in errors.items():
            self.metrics.item_errors.labels(code).inc(count)
        return response

    def _override_dict(self, index: OverrideIndex) -> dict[str, Override]:
        """The override index as a plain dict (the kernel's lookups stay in C), copied once per index."""
        cached, overrides = self._overrides
        if cached is not index:
            overrides = dict(index)
            self._overrides = (index, overrides)
        return overrides

    def _versions_field(self, snapshot: Snapshot) -> bytes:
        """CheckDeviceResponse.versions, encoded once per snapshot (snapshots are immutable: an identity check
        per call, where building and comparing the versions cost a microsecond)."""
        cached, field = self._versions
        if cached is not snapshot:
            field = pb.CheckDeviceResponse(versions=versions_message(snapshot)).SerializeToString()
            self._versions = (snapshot, field)
        return field

    def check_device_bytes(self, request: bytes) -> bytes:
        """One check, wire bytes in and out: the kernel's path."""
        return self.check_device_fast(request)

    @edge.unary("CheckDevice")
    def CheckDevice(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Registered with identity (de)serializers (add_to_server): wire bytes in, wire bytes out."""
        return self.check_device_bytes(request)

    @edge.unary("CheckDevices")
    def CheckDevices(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Registered with identity (de)serializers (add_to_server): wire bytes in, wire bytes out."""
        return self.check_devices_fast(request)

    @edge.streaming("StreamCheckDevices")
    def StreamCheckDevices(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """Registered with identity (de)serializers: each message is checked as CheckDevice checks it, and a
        message that can't be checked (malformed, invalid) gets a response with `error` and the stream goes on.

        Each open stream holds a thread of its own pool (see add_to_server) for its whole life, so a worker
        serves at most max_streams of them and refuses more at once rather than leave them waiting."""
        if not self._stream_slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"this worker already serves {self.max_streams} streams (max_streams); retry later or on another "
                "connection, or send batches with CheckDevices"
            )
        try:
            for request in request_iterator:
                try:
                    yield self.check_device_bytes(request)
                except ServiceError as exc:
                    self.metrics.item_errors.labels(exc.code).inc()
                    yield pb.CheckDeviceResponse(
                        request_id=_request_id(request), error=edge.status_message(exc)
                    ).SerializeToString()
        finally:
            self._stream_slots.release()


_MAX_DEPTH = 100  # nested groups, as the protobuf runtime (and batch_kernel.MAX_DEPTH) allows
STREAM_SPARE_THREADS = 4  # beyond max_streams: a stream over the limit finds a thread to be refused on at once


def add_to_server(servicer: DeviceCheckServicer, server: grpc.Server) -> None:
    """Register the servicer as the generated code does, but with identity (de)serializers: wire bytes.

    StreamCheckDevices runs on a pool of its own, sized by the servicer's max_streams (grpcio's
    `experimental_thread_pool` hook): a sync server's stream holds a pool thread while it is open, and on the
    server's shared pool 16 open streams would leave no thread for any unary or batch call.
    """
    stream_behavior = functools.partial(servicer.StreamCheckDevices)
    # grpcio's hook is an attribute it reads off the behavior, which no stub declares
    stream_behavior.experimental_thread_pool = futures.ThreadPoolExecutor(  # type: ignore[attr-defined]
        max_workers=servicer.max_streams + STREAM_SPARE_THREADS, thread_name_prefix="stream"
    )
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "CheckDevice": grpc.unary_unary_rpc_method_handler(servicer.CheckDevice),
        "CheckDevices": grpc.unary_unary_rpc_method_handler(servicer.CheckDevices),
        "StreamCheckDevices": grpc.stream_stream_rpc_method_handler(stream_behavior),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def count_items(data: bytes, limit: int) -> int:
    """How many `checks` (field 1) a CheckDevicesRequest's wire bytes hold, counting no further than `limit`:
    the pure-Python twin of the kernel's early stop (tests hold them to each other). Malformed bytes end the
    count (the parse that follows refuses them)."""
    count, pos, end = 0, 0, len(data)
    while pos < end and count < limit:
        tag, pos = _varint(data, pos)
        if tag is None or tag >> 3 == 0:
            break
        if tag == 0x0A:
            count += 1
        after = _skip(data, pos, tag, _MAX_DEPTH)
        if after is None:
            break
        pos = after
    return count


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return None, pos


def _skip(data: bytes, pos: int, tag: int, depth: int) -> int | None:
    """The position after the value of the field with `tag` at `pos` (groups nested up to `depth`), or None."""
    wire_type = tag & 7
    if wire_type == 0:
        value, pos = _varint(data, pos)
        return None if value is None else pos
    if wire_type == 1 or wire_type == 5:
        pos += 8 if wire_type == 1 else 4
        return pos if pos <= len(data) else None
    if wire_type == 2:
        size, pos = _varint(data, pos)
        return None if size is None or pos + size > len(data) else pos + size
    if wire_type == 3 and depth > 0:
        while True:
            inner, pos = _varint(data, pos)
            if inner is None:
                return None
            if inner & 7 == 4:
                return pos if inner >> 3 == tag >> 3 else None
            after = _skip(data, pos, inner, depth - 1)
            if after is None:
                return None
            pos = after
    return None


def _request_id(request: bytes) -> str:
    """The request_id of a CheckDeviceRequest's wire bytes, for an error response; empty if it can't be read."""
    try:
        return pb.CheckDeviceRequest.FromString(request).request_id
    except Exception:  # a malformed message: its error response can't name it
        return ""
