"""Override domain types and their validation: no I/O, no gRPC, no clock of their own."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from regionlock.core.serials import normalize_serial
from regionlock.service.errors import InvalidArgument

MAX_REASON = 500
MAX_TICKET = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OverrideAction(enum.Enum):
    """What an override does to a device's decision; the value is how stores spell it."""

    UNLOCK = "unlock"
    LOCK = "lock"


def to_micros(value: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch: exact, sortable, comparable in SQL."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """The inverse of to_micros, in UTC."""
    return _EPOCH + timedelta(microseconds=value)


@dataclass(frozen=True, slots=True)
class Override:
    """An administrator's decision about one serial, as stored."""

    serial: str
    action: OverrideAction
    reason: str
    ticket: str
    actor: str
    create_time: datetime
    expire_time: datetime | None
    revision: int

    def is_live(self, now: datetime) -> bool:
        """True while the override applies: it has no expiry or the expiry is still ahead."""
        return self.expire_time is None or now < self.expire_time

    def same_request(self, change: OverrideChange) -> bool:
        """True when setting `change` would leave this override as it is (actor and time don't count)."""
        return (
            self.action is change.action
            and self.reason == change.reason
            and self.ticket == change.ticket
            and self.expire_time == change.expire_time
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, used for the before/after columns of audit events."""
        return {
            "serial": self.serial,
            "action": self.action.value,
            "reason": self.reason,
            "ticket": self.ticket,
            "actor": self.actor,
            "create_time": to_micros(self.create_time),
            "expire_time": None if self.expire_time is None else to_micros(self.expire_time),
            "revision": self.revision,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Override:
        """The inverse of to_dict."""
        expire = data["expire_time"]
        return cls(
            serial=data["serial"],
            action=OverrideAction(data["action"]),
            reason=data["reason"],
            ticket=data["ticket"],
            actor=data["actor"],
            create_time=from_micros(data["create_time"]),
            expire_time=None if expire is None else from_micros(expire),
            revision=data["revision"],
        )


def validate_serial(serial: object, field: str = "serial") -> str:
    """The normalized serial, or InvalidArgument naming `field`; the one rule lives in core.serials."""
    if not isinstance(serial, str) or not serial:
        raise InvalidArgument(field, "required")
    try:
        return normalize_serial(serial)
    except ValueError as exc:
        raise InvalidArgument(field, str(exc)) from None


def validate_reason_ticket(reason: object, ticket: object, prefix: str = "") -> None:
    """Check the why of a change: reason required and at most 500 characters, ticket at most 200."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidArgument(prefix + "reason", "required")
    # PostgreSQL can't store a NUL in text; refused for every store, so both backends behave alike
    if "\x00" in reason:
        raise InvalidArgument(prefix + "reason", "must not contain NUL characters")
    if len(reason) > MAX_REASON:
        raise InvalidArgument(prefix + "reason", f"at most {MAX_REASON} characters, got {len(reason)}")
    if not isinstance(ticket, str):
        raise InvalidArgument(prefix + "ticket", "must be text")
    if "\x00" in ticket:
        raise InvalidArgument(prefix + "ticket", "must not contain NUL characters")
    if len(ticket) > MAX_TICKET:
        raise InvalidArgument(prefix + "ticket", f"at most {MAX_TICKET} characters, got {len(ticket)}")


def parse_action(value: object, field: str = "action") -> OverrideAction:
    """An OverrideAction from itself or its name/value in any case; InvalidArgument for anything else."""
    if isinstance(value, OverrideAction):
        return value
    if isinstance(value, str):
        try:
            return OverrideAction(value.strip().lower())
        except ValueError:
            pass
    raise InvalidArgument(field, f"must be UNLOCK or LOCK, got {value!r}")


@dataclass(frozen=True, slots=True)
class OverrideChange:
    """A requested set of one override; `validate` returns the normalized form the stores accept."""

    serial: str
    action: OverrideAction | str | None
    reason: str
    ticket: str = ""
    expire_time: datetime | None = None

    def validate(self, now: datetime, prefix: str = "") -> OverrideChange:
        """The change with its serial normalized; InvalidArgument names `prefix + field` (e.g. items[3].)."""
        serial = validate_serial(self.serial, prefix + "serial")
        action = parse_action(self.action, prefix + "action")
        validate_reason_ticket(self.reason, self.ticket, prefix)
        expire = self.expire_time
        if expire is not None:
            if expire.tzinfo is None:
                raise InvalidArgument(prefix + "expire_time", "must carry a time zone")
            if expire <= now:
                raise InvalidArgument(prefix + "expire_time", "must be in the future")
            expire = expire.astimezone(UTC)
        return OverrideChange(serial, action, self.reason, self.ticket, expire)

    def to_override(self, actor: str, now: datetime, revision: int) -> Override:
        """The override this (validated) change creates."""
        assert isinstance(self.action, OverrideAction), "validate() first"
        return Override(self.serial, self.action, self.reason, self.ticket, actor, now, self.expire_time, revision)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One entry of the append-only audit trail.

    `action` is "set", "set_unchanged" or "delete" for a change of overrides, or one of ADMIN_ACTIONS for
    what else an administrator did (serial "", no before/after, `details` says what); `event_id` orders
    events (a bulk call shares one revision across many events, so the revision alone can't).
    """

    revision: int
    time: datetime
    actor: str
    action: str
    serial: str
    before: Override | None
    after: Override | None
    reason: str
    ticket: str
    event_id: int = 0
    details: dict[str, str] | None = None


# audit events that are not changes of overrides: a data reload, a token added to or removed from the file
ADMIN_ACTIONS = ("reload", "token_create", "token_revoke")


@dataclass(frozen=True, slots=True)
class BulkResult:
    """The outcome of a bulk set: counts, and the store revision after the call."""

    created: int
    changed: int
    unchanged: int
    revision: int
