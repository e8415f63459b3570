"""AdminService: translates proto to the override store, reloads and status, and back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from regionlock.admin.v1 import admin_pb2 as pb
from regionlock.admin.v1 import admin_pb2_grpc as pb_grpc
from regionlock.service.errors import InvalidArgument, NotFound, Unavailable
from regionlock.service.overrides.model import (
    Override,
    OverrideAction,
    OverrideChange,
    validate_serial,
)
from regionlock.service.overrides.store import MAX_BULK_ITEMS
from regionlock.service.server import edge
from regionlock.service.server.auth import current_principal
from regionlock.service.server.check.servicer import utc_now, versions_message
from regionlock.service.snapshot import allowlist_built_at

if TYPE_CHECKING:
    from regionlock.service.overrides.index import OverrideIndexRefresher
    from regionlock.service.overrides.store import OverrideStore
    from regionlock.service.server.metrics import Metrics
    from regionlock.service.server.settings import Settings
    from regionlock.service.snapshot import Snapshot, SnapshotHolder


class AdminBackend(Protocol):
    """What the servicer needs of the serving process (lifecycle.Service): given to it, never imported."""

    settings: Settings
    metrics: Metrics
    store: OverrideStore
    holder: SnapshotHolder
    refresher: OverrideIndexRefresher
    start_time: float

    def reload_everywhere(self, actor: str) -> Snapshot: ...


_T = TypeVar("_T")
_ACTIONS = {pb.OVERRIDE_ACTION_UNLOCK: OverrideAction.UNLOCK, pb.OVERRIDE_ACTION_LOCK: OverrideAction.LOCK}
_PROTO_ACTIONS = {action: value for value, action in _ACTIONS.items()}


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _epoch_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    return _timestamp(datetime.fromtimestamp(seconds, UTC))


def override_message(override: Override) -> pb.Override:
    message = pb.Override(
        serial=override.serial,
        action=_PROTO_ACTIONS[override.action],
        reason=override.reason,
        ticket=override.ticket,
        actor=override.actor,
        create_time=_timestamp(override.create_time),
        revision=override.revision,
    )
    if override.expire_time is not None:
        message.expire_time.CopyFrom(_timestamp(override.expire_time))
    return message


def _action_filter(value: pb.OverrideAction, field: str) -> OverrideAction | None:
    if value == pb.OVERRIDE_ACTION_UNSPECIFIED:
        return None
    if value not in _ACTIONS:
        raise InvalidArgument(field, f"unknown action {value}")
    return _ACTIONS[value]


# what google.protobuf.Timestamp allows (0001-01-01 to 9999-12-31 UTC), which is also what datetime holds
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def _expire_time(request: pb.SetOverrideRequest, field: str) -> datetime | None:
    if not request.HasField("expire_time"):
        return None
    ts = request.expire_time
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos <= 999_999_999:
        raise InvalidArgument(field, "must be a valid timestamp between 0001-01-01 and 9999-12-31 UTC")
    return ts.ToDatetime(tzinfo=UTC)


def change_from(request: pb.SetOverrideRequest, prefix: str = "") -> OverrideChange:
    """The domain change a SetOverrideRequest asks for (validated later, with the item's index as `prefix`)."""
    return OverrideChange(
        serial=request.serial,
        action=_ACTIONS.get(request.action),
        reason=request.reason,
        ticket=request.ticket,
        expire_time=_expire_time(request, prefix + "expire_time"),
    )


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Thin handlers over the store, the snapshot holder and the override index of one Service."""

    def __init__(self, service: AdminBackend, clock: Callable[[], datetime] = utc_now) -> None:
        self.service = service
        self.metrics = service.metrics
        self.clock = clock

    def _store_call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a store call; a store that can't be reached becomes UNAVAILABLE with a clear message."""
        try:
            return fn(*args)
        except (InvalidArgument, NotFound):
            raise
        except OSError as exc:
            raise Unavailable(f"the override store is unavailable: {exc}") from None

    def _caught_up(self) -> None:
        # the writing process's check path sees its own write at once, not at the next poll
        self.service.refresher.refresh()

    @edge.unary("SetOverride")
    def SetOverride(self, request: pb.SetOverrideRequest, context: grpc.ServicerContext) -> pb.SetOverrideResponse:
        now = self.clock()
        change = change_from(request).validate(now)
        override, revision = self._store_call(self.service.store.set, change, current_principal().name, now)
        self._caught_up()
        return pb.SetOverrideResponse(override=override_message(override), revision=revision)

    @edge.unary("GetOverride")
    def GetOverride(self, request: pb.GetOverrideRequest, context: grpc.ServicerContext) -> pb.GetOverrideResponse:
        serial = validate_serial(request.serial)
        override = self._store_call(self.service.store.get, serial)
        if override is None:
            raise NotFound(f"no override for serial {serial}")
        return pb.GetOverrideResponse(override=override_message(override))

    @edge.unary("DeleteOverride")
    def DeleteOverride(
        self, request: pb.DeleteOverrideRequest, context: grpc.ServicerContext
    ) -> pb.DeleteOverrideResponse:
        now = self.clock()
        serial = validate_serial(request.serial)
        revision = self._store_call(
            self.service.store.delete, serial, request.reason, request.ticket, current_principal().name, now
        )
        self._caught_up()
        return pb.DeleteOverrideResponse(revision=revision)

    @edge.unary("ListOverrides")
    def ListOverrides(
        self, request: pb.ListOverridesRequest, context: grpc.ServicerContext
    ) -> pb.ListOverridesResponse:
        action = _action_filter(request.action, "action")
        overrides, token = self._store_call(
            self.service.store.list,
            request.page_size,
            request.page_token,
            action,
            request.include_expired,
            self.clock(),
        )
        return pb.ListOverridesResponse(overrides=[override_message(o) for o in overrides], next_page_token=token)

    @edge.unary("BulkSetOverrides")
    def BulkSetOverrides(
        self, request: pb.BulkSetOverridesRequest, context: grpc.ServicerContext
    ) -> pb.BulkSetOverridesResponse:
        if len(request.items) > MAX_BULK_ITEMS:
            raise InvalidArgument("items", f"at most {MAX_BULK_ITEMS} items per call, got {len(request.items)}")
        now = self.clock()
        changes = [change_from(item, f"items[{i}].") for i, item in enumerate(request.items)]
        result = self._store_call(self.service.store.bulk_set, changes, current_principal().name, now, request.dry_run)
        if not request.dry_run:
            self._caught_up()
        return pb.BulkSetOverridesResponse(
            created=result.created,
            changed=result.changed,
            unchanged=result.unchanged,
            revision=result.revision,
        )

    @edge.unary("ListAuditEvents")
    def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        serial = validate_serial(request.serial) if request.serial else ""
        events, token = self._store_call(self.service.store.list_audit, request.page_size, request.page_token, serial)
        messages = []
        for event in events:
            message = pb.AuditEvent(
                revision=event.revision,
                time=_timestamp(event.time),
                actor=event.actor,
                action=event.action,
                serial=event.serial,
                reason=event.reason,
                ticket=event.ticket,
            )
            if event.details:
                message.details.update(event.details)
            if event.before is not None:
                message.before.CopyFrom(override_message(event.before))
            if event.after is not None:
                message.after.CopyFrom(override_message(event.after))
            messages.append(message)
        return pb.ListAuditEventsResponse(events=messages, next_page_token=token)

    @edge.unary("ReloadData")
    def ReloadData(self, request: pb.ReloadDataRequest, context: grpc.ServicerContext) -> pb.ReloadDataResponse:
        snapshot = self.service.reload_everywhere(current_principal().name)
        return pb.ReloadDataResponse(versions=versions_message(snapshot))

    @edge.unary("GetStatus")
    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.GetStatusResponse:
        service = self.service
        response = pb.GetStatusResponse(
            start_time=_epoch_timestamp(service.start_time),
            reloads_ok=service.holder.reloads_ok,
            reloads_failed=service.holder.reloads_failed,
            overrides_staleness_seconds=service.refresher.staleness_seconds(),
            last_reload_error=service.holder.last_error,
        )
        snapshot = service.holder.current
        if snapshot is not None:
            response.versions.CopyFrom(versions_message(snapshot))
            response.networks = snapshot.geo.network_count
            response.serials = len(snapshot.allowlist)
            response.overrides = snapshot.overrides.count_live(self.clock())
            response.mode = snapshot.policy.mode
            geo = snapshot.geo_provenance
            if geo.built_at is not None:
                response.geo_build_time.CopyFrom(_epoch_timestamp(geo.built_at))
            for source in geo.sources:
                message = response.geo_sources.add(name=source.name, database_type=source.database_type)
                if source.build_epoch is not None:
                    message.build_time.CopyFrom(_epoch_timestamp(source.build_epoch))
            now = self.clock().timestamp()
            response.geo_age_warning = geo.age_warning(now, service.settings.geo_max_age_days)
            allowlist_built = allowlist_built_at(snapshot.allowlist)
            if allowlist_built is not None:
                response.allowlist_build_time.CopyFrom(_epoch_timestamp(allowlist_built))
        return response
