"""Geo benchmark: build from GeoLite2-City, file size, memory after open, lookups vs maxminddb, pytricia, py-radix.

    .venv/bin/python -m benchmarks.geo [--single 200000] [--batch 10000000]

The built database is kept under benchmarks/data/ (git-ignored). pytricia and py-radix are optional (the
`bench` extra); without them their rows are skipped. Every rate is the median of 3 runs, on the same addresses.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import statistics
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import geolite2
import maxminddb

from benchmarks.common import DATA, RUNS, median_rate
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_build import build_geo_database
from regionlock.core.mmdb_read import walk_mmdb_tree


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=200_000, help="addresses for single lookups")
    parser.add_argument("--batch", type=int, default=10_000_000, help="packed IPv4 addresses per batch")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    mmdb = geolite2.geolite2_database()
    out = DATA / "geolite2-city.rlgeo"

    builds = []
    for _ in range(RUNS):
        start = time.perf_counter()
        build_geo_database([mmdb], out)
        builds.append(time.perf_counter() - start)
    print(f"build from GeoLite2-City: median {statistics.median(builds):.2f} s of {RUNS} runs")
    size, source_size = os.path.getsize(out) / 2**20, os.path.getsize(mmdb) / 2**20
    print(f"file size: {size:.1f} MiB (GeoLite2-City.mmdb: {source_size:.1f} MiB)")
    before = rss_mib()
    start = time.perf_counter()
    db = GeoDatabase.open(out, verify=False)
    opened = time.perf_counter() - start
    print(f"open(verify=False): {opened * 1e3:.2f} ms; RSS {before:.0f} MiB before, {rss_mib():.0f} MiB after")
    start = time.perf_counter()
    GeoDatabase.open(out, verify=True)
    print(f"open(verify=True): {(time.perf_counter() - start) * 1e3:.0f} ms")

    rng = random.Random(7)
    v4_ints = [rng.getrandbits(32) for _ in range(args.single)]
    v4_text = [str(ipaddress.IPv4Address(a)) for a in v4_ints]
    reader = maxminddb.open_database(mmdb, maxminddb.MODE_MMAP_EXT)
    data = Path(mmdb).read_bytes()
    meta = reader.metadata()
    walked = walk_mmdb_tree(
        memoryview(data)[: meta.node_count * meta.record_size // 4], meta.node_count, meta.record_size, 6, len(data)
    )
    v4_nets = [f"{ipaddress.IPv4Address(s)}/{p}" for s, p in zip(walked[0], walked[1], strict=True)]
    v6_hi, v6_lo, v6_p = walked[3], walked[4], walked[5]

    rows: list[tuple[str, float]] = []

    def single(name: str, fn: Callable[[str], object]) -> None:
        def run() -> None:
            for ip in v4_text:
                fn(ip)

        rows.append((name, median_rate(len(v4_text), run)))

    single("regionlock lookup(str)", db.lookup)
    single("regionlock region_id(str)", db.region_id)
    single("maxminddb MODE_MMAP_EXT get(str)", reader.get)
    try:
        import pytricia
    except ImportError:
        print("pytricia: not installed (pip install pytricia)")
    else:
        tree = pytricia.PyTricia(32)
        for net in v4_nets:
            tree[net] = 1
        single("pytricia get(str)", tree.get)
        del tree
    try:
        import radix
    except ImportError:
        print("py-radix: not installed (pip install py-radix)")
    else:
        rtree = radix.Radix()
        for net in v4_nets:
            rtree.add(net)
        single("py-radix search_best(str)", rtree.search_best)
        del rtree
    reader.close()
    base = dict(rows)
    print("\nsingle IPv4 lookups from Python, same random addresses:")
    for name, rate in rows:
        ratios = ", ".join(
            f"{rate / base[other]:.1f}x {other.split()[0]}"
            for other in ("maxminddb MODE_MMAP_EXT get(str)", "pytricia get(str)", "py-radix search_best(str)")
            if other in base and name.startswith("regionlock")
        )
        print(f"  {name:36s} {rate:>14,.0f}/s  {ratios}")

    packed4 = array("I", [rng.getrandbits(32) for _ in range(args.batch)])
    n6 = args.batch // 10
    packed6 = bytearray()
    for _ in range(n6):
        k = rng.randrange(len(v6_hi))
        value = ((v6_hi[k] << 64) | v6_lo[k]) | rng.getrandbits(128 - v6_p[k])
        packed6 += value.to_bytes(16, "big")
    strings = v4_text * max(1, 1_000_000 // len(v4_text))
    print("\nbatches (one core):")
    for name, n, fn in (
        ("region_ids_v4(packed uint32, random)", len(packed4), lambda: db.region_ids_v4(packed4)),
        ("region_ids_v6(packed 16-byte, in networks)", n6, lambda: db.region_ids_v6(packed6)),
        ("region_ids(list of IPv4 str)", len(strings), lambda: db.region_ids(strings)),
        ("lookup_many(list of IPv4 str) -> Regions", len(strings), lambda: db.lookup_many(strings)),
    ):
        print(f"  {name:44s} {median_rate(n, fn) / 1e6:8.1f} M/s")
    print(f"\nRSS after all lookups: {rss_mib():.0f} MiB (includes the test data and the baselines' trees)")


if __name__ == "__main__":
    main()
