"""decide(): the order of the decision steps as one pure function (no gRPC, no I/O, no clock of its own)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from regionlock.core.serials import shorten
from regionlock.service.errors import InvalidArgument
from regionlock.service.overrides.model import OverrideAction, validate_serial

if TYPE_CHECKING:
    from regionlock.core.geo import Region
    from regionlock.service.snapshot import Snapshot


class Verdict(enum.IntEnum):
    """What the device must do now: regionlock.v1.Verdict without its prefix (test_enums_match_proto.py)."""

    ALLOW = 1
    BLOCK = 2


class Reason(enum.IntEnum):
    """Which step decided: regionlock.v1.Reason without its prefix (test_enums_match_proto.py)."""

    AUTHORIZED = 1
    REGION_RESTRICTED = 2
    GRAY_IMPORT = 3
    UNKNOWN_SERIAL = 4
    UNKNOWN_REGION = 5
    OVERRIDE_UNLOCK = 6
    OVERRIDE_LOCK = 7


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check, before it is turned into a response."""

    verdict: Verdict
    reason: Reason
    rule_id: str
    region: Region | None
    sold_market: str | None
    enforced: bool
    message: str
    cache_ttl_seconds: int
    trace: tuple[str, ...] | None = None


def _describe(region: Region | None) -> str:
    if region is None:
        return "in no known network"
    where = region.subdivision or region.country
    return f"{where} (network {region.network})"


def _matched(entries: frozenset[str], region: Region) -> str:
    """What matched the region: the region itself, or a wider entry (its country, or "*") and the region in
    parentheses, as in `CU (CU-09)`."""
    where = region.subdivision or region.country
    if where in entries:
        return where
    wider = region.country if region.country in entries else "*"
    return f"{wider} ({where})"


def decide(snapshot: Snapshot, serial: str, ip: str, now: datetime, explain: bool = False) -> Decision:
    """Decide one device at one address; the first step that applies decides (see README, "Decision")."""
    key = validate_serial(serial)
    try:
        region = snapshot.geo.lookup(ip)
    except ValueError:
        raise InvalidArgument("ip", f"expected an IPv4 or IPv6 address, got {shorten(ip)!r}") from None
    policy = snapshot.policy
    messages = policy.messages
    market = snapshot.allowlist.get(key)
    trace: list[str] | None = [] if explain else None
    if trace is not None:
        trace.append(f"region: {ip} is {_describe(region)}")
        trace.append(f"allowlist: {key} " + (f"sold for market {market}" if market else "is not in the allowlist"))

    override = snapshot.overrides.get(key)
    if override is not None and not override.is_live(now):
        if trace is not None:
            trace.append(f"override: {override.action.name} at revision {override.revision} has expired, ignored")
        override = None
    if override is not None:
        locked = override.action is OverrideAction.LOCK
        if trace is not None:
            # the check port is unauthenticated: the actor, reason and ticket are the Admin API's to tell
            action, revision = override.action.name, override.revision
            trace.append(f"override: {action} at revision {revision} decides; overrides are always applied")
        return Decision(
            verdict=Verdict.BLOCK if locked else Verdict.ALLOW,
            reason=Reason.OVERRIDE_LOCK if locked else Reason.OVERRIDE_UNLOCK,
            rule_id=f"override:{key}@{override.revision}",
            region=region,
            sold_market=market,
            enforced=True,
            message=messages["override_lock"] if locked else "",
            cache_ttl_seconds=policy.cache_ttl_seconds,
            trace=tuple(trace) if trace is not None else None,
        )
    if trace is not None:
        trace.append("override: none for this serial")

    rule_id = ""
    if region is not None and (rule := policy.restricted_rule(region.country, region.subdivision)) is not None:
        reason, block, rule_id, message = Reason.REGION_RESTRICTED, True, rule.rule_id, rule.message
        step = f"rule {rule.rule_id} restricts {_matched(rule.regions, region)}"
    elif region is None:
        reason, block, message = (
            Reason.UNKNOWN_REGION,
            policy.block_unknown_region,
            messages["unknown_region"],
        )
        rule_id = "actions.unknown_region"
        step = f"unknown region: actions.unknown_region = {'block' if block else 'allow'}"
    elif market is None:
        reason, block, message = (
            Reason.UNKNOWN_SERIAL,
            policy.block_unknown_serial,
            messages["unknown_serial"],
        )
        rule_id = "actions.unknown_serial"
        step = f"unknown serial: actions.unknown_serial = {'block' if block else 'allow'}"
    elif not policy.market_covers(market, region.country, region.subdivision):
        reason, block, message = Reason.GRAY_IMPORT, policy.block_gray_import, messages["gray_import"]
        rule_id = f"markets.{market}"
        if market in policy.markets:
            step = f"gray import: market {market} does not cover {region.subdivision or region.country}; "
        else:
            step = f"gray import: market {market} is not defined in the policy and covers nothing; "
        step += f"actions.gray_import = {'block' if block else 'allow'}"
    else:
        reason, block, message = Reason.AUTHORIZED, False, ""
        rule_id = f"markets.{market}"
        step = f"authorized: market {market} covers {_matched(policy.markets[market], region)}"

    enforced = not (block and policy.monitor)
    if not (block and enforced):
        message = ""  # text for a blocked device's user; an allowed one (monitor mode too) shows none
    if trace is not None:
        trace.append(step)
        if block:
            trace.append(
                "mode: monitor, so the block is reported but not enforced" if not enforced else "mode: enforce"
            )
        else:
            trace.append(f"mode: {policy.mode}")
    return Decision(
        verdict=Verdict.BLOCK if block and enforced else Verdict.ALLOW,
        reason=reason,
        rule_id=rule_id,
        region=region,
        sold_market=market,
        enforced=enforced,
        message=message,
        cache_ttl_seconds=policy.cache_ttl_seconds,
        trace=tuple(trace) if trace is not None else None,
    )
