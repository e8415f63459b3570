"""Request mixes for `regionlock bench`: drawn from the server's own data files, encoded as gRPC frames.

h2load sends one body file for every request of a run, so the mix is fixed before the run: checks are
chosen by deciding candidate (serial, address) pairs with the service's own `decide()` over the same data
files (with no overrides), until every reason that the data can produce has examples. Addresses come from
probing the IPv4 space (a grid of one address per /16, bucketed by region id); serials from random
allowlist entries per market, plus serials that are not in the allowlist.
"""

from __future__ import annotations

import random
import time
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from regionlock.service.decision import Reason, decide
from regionlock.service.errors import ServiceError
from regionlock.v1 import device_check_pb2 as pb

if TYPE_CHECKING:
    from regionlock.core.allowlist import Allowlist
    from regionlock.core.geo import GeoDatabase
    from regionlock.service.snapshot import Snapshot

# The reasons the data files alone can produce; the override reasons need overrides in the store.
DATA_REASONS = (
    Reason.AUTHORIZED,
    Reason.REGION_RESTRICTED,
    Reason.GRAY_IMPORT,
    Reason.UNKNOWN_SERIAL,
    Reason.UNKNOWN_REGION,
)
METHOD_UNARY = "/regionlock.v1.DeviceCheckService/CheckDevice"
METHOD_BATCH = "/regionlock.v1.DeviceCheckService/CheckDevices"
METHOD_STREAM = "/regionlock.v1.DeviceCheckService/StreamCheckDevices"
_UNKNOWN_ADDRESSES = ("10.0.0.1", "192.168.1.1", "172.16.0.1", "198.51.100.7", "203.0.113.9")


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, the message."""
    return b"\0" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True, slots=True)
class Case:
    """One check and the reason the data gives it."""

    serial: str
    ip: str
    reason: Reason


@dataclass
class Mix:
    """Checks per reason; the frames of a run are built from these."""

    cases: dict[Reason, list[Case]]
    missing: list[Reason] = field(default_factory=list)

    @property
    def reasons(self) -> list[Reason]:
        return [r for r in DATA_REASONS if self.cases.get(r)]

    def round_robin(self, n: int) -> list[Case]:
        """n cases, the reasons interleaved, each reason cycling through its own examples."""
        reasons = self.reasons
        return [
            self.cases[reasons[i % len(reasons)]][(i // len(reasons)) % len(self.cases[reasons[i % len(reasons)]])]
            for i in range(n)
        ]

    def unary_bodies(self) -> list[tuple[Reason, bytes]]:
        """One CheckDevice request frame per reason."""
        bodies = []
        for reason in self.reasons:
            case = self.cases[reason][0]
            message = pb.CheckDeviceRequest(serial=case.serial, ip=case.ip, request_id=f"bench-{reason.name.lower()}")
            bodies.append((reason, grpc_frame(message.SerializeToString())))
        return bodies

    def batch_body(self, size: int) -> bytes:
        """One CheckDevices request frame of `size` items mixing every reason."""
        checks = [
            pb.CheckDeviceRequest(serial=c.serial, ip=c.ip, request_id=f"b{i}")
            for i, c in enumerate(self.round_robin(size))
        ]
        return grpc_frame(pb.CheckDevicesRequest(checks=checks).SerializeToString())

    def stream_messages(self, n: int = 1000) -> list[bytes]:
        """Serialized CheckDeviceRequest messages (no frame: the gRPC client frames them) mixing every reason."""
        return [
            pb.CheckDeviceRequest(serial=c.serial, ip=c.ip, request_id=f"s{i}").SerializeToString()
            for i, c in enumerate(self.round_robin(n))
        ]


def _probe_addresses(geo: GeoDatabase, rng: random.Random, per_region: int) -> tuple[dict[int, list[str]], list[str]]:
    """Addresses by region id from one random address per /16 of 1.0.0.0-223.255.255.255; and unknown ones."""
    values = array("I", ((a << 24) | (b << 16) | rng.getrandbits(16) for a in range(1, 224) for b in range(256)))
    ids = geo.region_ids_v4(values)
    by_region: dict[int, list[str]] = {}
    unknown: list[str] = []
    for value, region_id in zip(values, ids, strict=True):
        ip = f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
        if geo.region(region_id) is None:
            if len(unknown) < per_region:
                unknown.append(ip)
        elif len(bucket := by_region.setdefault(region_id, [])) < per_region:
            bucket.append(ip)
    unknown.extend(ip for ip in _UNKNOWN_ADDRESSES if geo.lookup(ip) is None)
    return by_region, unknown


def _sample_serials(
    allowlist: Allowlist, rng: random.Random, per_market: int, draws: int = 5000
) -> dict[str, list[str]]:
    by_market: dict[str, list[str]] = {}
    n = len(allowlist)
    for _ in range(min(draws, n * 4)):
        serial, market = allowlist.entry(rng.randrange(n))
        bucket = by_market.setdefault(market, [])
        if len(bucket) < per_market and serial not in bucket:
            bucket.append(serial)
    unknown = [s for s in (f"BENCH-UNKNOWN-{i:06d}" for i in range(per_market)) if allowlist.get(s) is None]
    by_market[""] = unknown
    return by_market


def open_snapshot(geo_path: Path, allowlist_path: Path, policy_path: Path) -> Snapshot:
    """The data files and policy as a Snapshot with no overrides (what a fresh server decides)."""
    from regionlock.core.allowlist import Allowlist
    from regionlock.core.geo import GeoDatabase
    from regionlock.service.overrides.index import OverrideIndex
    from regionlock.service.policy import load_policy
    from regionlock.service.snapshot import Snapshot

    return Snapshot(
        geo=GeoDatabase.open(geo_path, verify=False),
        allowlist=Allowlist.open(allowlist_path, verify=False),
        policy=load_policy(policy_path),
        overrides=OverrideIndex.empty(),
        loaded_at=time.time(),
    )


def build_mix(snapshot: Snapshot, seed: int = 0, per_reason: int = 16, max_regions: int = 400) -> Mix:
    """Decide candidate pairs over the snapshot and keep up to `per_reason` examples of each reason."""
    rng = random.Random(seed)
    by_region, unknown_ips = _probe_addresses(snapshot.geo, rng, per_region=2)
    region_ids = sorted(by_region)
    rng.shuffle(region_ids)
    ips = [ip for rid in region_ids[:max_regions] for ip in by_region[rid]][: 2 * max_regions] + unknown_ips
    serials = _sample_serials(snapshot.allowlist, rng, per_market=3)
    now = datetime.now(UTC)
    cases: dict[Reason, list[Case]] = {reason: [] for reason in DATA_REASONS}
    candidates = [(serial, ip) for group in serials.values() for serial in group for ip in ips]
    rng.shuffle(candidates)
    for serial, ip in candidates:
        try:
            reason = Reason(decide(snapshot, serial, ip, now).reason)
        except ServiceError:
            continue
        bucket = cases.setdefault(reason, [])
        if len(bucket) < per_reason:
            bucket.append(Case(serial, ip, reason))
        if all(len(cases[r]) >= per_reason for r in DATA_REASONS):
            break
    return Mix(cases={r: cases[r] for r in DATA_REASONS if cases[r]}, missing=[r for r in DATA_REASONS if not cases[r]])
