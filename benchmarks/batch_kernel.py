"""Batch kernel: CheckDevices decisions per second in-process, kernel alone and through the servicer, vs the reference.

    .venv/bin/python -m benchmarks.batch_kernel [--batch 1000] [--serials 10000000]

Data: GeoLite2-City compiled (benchmarks/data/geolite2-city.rlgeo, built here if missing), a demo allowlist
(built here if missing) and the default policy. A batch mixes 75% known serials and 25% unknown ones with
85% random IPv4, 12% IPv6 and 3% IPv4-mapped addresses, so every reason the data can give occurs.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
from datetime import UTC, datetime

from benchmarks.common import DATA, median_rate
from regionlock.core.allowlist_demo import build_demo_allowlist
from regionlock.core.geo_build import build_geo_database
from regionlock.service.policy import default_policy_text
from regionlock.service.server.check import batch_kernel
from regionlock.service.server.check.servicer import DeviceCheckServicer
from regionlock.service.server.embedded import geolite2_city_path
from regionlock.service.server.metrics import Metrics
from regionlock.service.server.settings import Settings
from regionlock.service.snapshot import SnapshotHolder
from regionlock.v1 import device_check_pb2 as pb


def _address(rng: random.Random) -> str:
    k = rng.random()
    if k < 0.85:
        return str(ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24)))
    if k < 0.97:
        return str(ipaddress.IPv6Address(rng.randrange(0x2001 << 112, 0x2C10 << 112)))
    return f"::ffff:{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--serials", type=int, default=10_000_000)
    args = parser.parse_args(argv)
    DATA.mkdir(exist_ok=True)
    geo = DATA / "geolite2-city.rlgeo"
    if not geo.exists():
        build_geo_database([geolite2_city_path()], geo)
    allowlist = DATA / f"allowlist-demo-{args.serials}.rlallow"
    if not allowlist.exists():
        build_demo_allowlist(args.serials, allowlist, seed=0)
    policy = DATA / "default-policy.toml"
    policy.write_text(default_policy_text())
    holder = SnapshotHolder()
    holder.reload(Settings(data_dir=DATA, geo=geo, allowlist=allowlist, policy=policy))
    snapshot = holder.current
    now = datetime.now(UTC)
    servicer = DeviceCheckServicer(holder, Metrics(), 10_000, clock=lambda: now)

    rng = random.Random(1)
    entries = snapshot.allowlist
    checks = [
        pb.CheckDeviceRequest(
            serial=entries.entry(rng.randrange(len(entries)))[0] if i % 4 else f"UNKNOWN-{i:07d}",
            ip=_address(rng),
            request_id=f"b{i}",
        )
        for i in range(args.batch)
    ]
    data = pb.CheckDevicesRequest(checks=checks).SerializeToString()
    mix: dict[str, int] = {}
    for result in pb.CheckDevicesResponse.FromString(servicer.check_devices_fast(data)).results:
        name = pb.Reason.Name(result.response.reason)
        mix[name] = mix.get(name, 0) + 1
    print(f"batch of {args.batch}: request {len(data):,} bytes; reasons {mix}")

    table = servicer._tables.get(snapshot).kernel
    versions = servicer._versions_field(snapshot)

    def kernel_only() -> None:
        for _ in range(50):
            batch = batch_kernel.Batch(data)
            batch.look_up(snapshot.geo, snapshot.allowlist)
            batch.encode(table, versions, b"0123456789ab-", 1, [])

    def servicer_fast() -> None:
        for _ in range(50):
            servicer.check_devices_fast(data)

    def reference() -> None:
        servicer.check_devices_reference(pb.CheckDevicesRequest.FromString(data)).SerializeToString()

    fast_kernel = median_rate(50 * args.batch, kernel_only)
    fast_servicer = median_rate(50 * args.batch, servicer_fast)
    slow = median_rate(args.batch, reference)
    print(f"kernel alone (parse, look up, encode)   {fast_kernel:12,.0f} decisions/s")
    print(f"servicer check_devices_fast             {fast_servicer:12,.0f} decisions/s  {fast_servicer / slow:.0f}x")
    print(f"reference: protobuf + decide() per item {slow:12,.0f} decisions/s")


if __name__ == "__main__":
    main()
