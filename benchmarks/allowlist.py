"""Allowlist benchmark: build time and memory, open, verify, lookups vs dict, SQLite, numpy.searchsorted and C.

    .venv/bin/python -m benchmarks.allowlist [--rows 100000000] [--baseline-rows 10000000]

Data (the demo CSV and the built file) is kept under benchmarks/data/ (git-ignored) and reused. The machine's
ceiling, measured in the same run by memory_ceiling.c (compiled with gcc): a dependent random read's latency
and a bare C bucket index over as many 64-bit keys.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import DATA, RUNS, median_rate
from regionlock.core.allowlist import Allowlist, _check_codec
from regionlock.core.allowlist_demo import demo_csv_rows, write_demo_csv


def build(rows: int, csv_path: Path, out: Path) -> dict[str, float]:
    """Build in a child process (one run): wall time and the child's peak RSS."""
    script = (
        "import sys, time\n"
        "from regionlock.core.allowlist_build import build_allowlist\n"
        "t = time.monotonic()\n"
        "r = build_allowlist([sys.argv[1]], sys.argv[2])\n"
        "print(time.monotonic() - t, r.count)\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    out_text = subprocess.run(
        [sys.executable, "-c", script, str(csv_path), str(out)], check=True, capture_output=True, text=True
    ).stdout
    wall = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds, count = out_text.split()
    return {
        "load_average_1min": os.getloadavg()[0],
        "rows": rows,
        "count": int(count),
        "build_s": float(seconds),
        "process_s": wall,
        "peak_rss_mb": peak / 1024 if peak > before else float("nan"),
    }


def machine_ceiling(rows: int, n_queries: int) -> dict[str, float] | None:
    """memory_ceiling.c compiled here and run once: the machine's dependent-read latency and a bare C bucket
    index's lookup rate on `rows` 64-bit keys, measured in the same run as the allowlist; None without gcc."""
    source = Path(__file__).with_name("memory_ceiling.c")
    binary = DATA / "memory_ceiling"
    if not (binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime):
        try:
            subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"benchmarks.allowlist: no C ceiling ({exc})", file=sys.stderr)
            return None
    out = subprocess.run([str(binary), str(rows), str(n_queries)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def queries(al: Allowlist, n: int, seed: int = 1) -> list[str]:
    """n lookups: 3/4 stored serials drawn at random (entry), 1/4 absent ones (one character changed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        serial = al.entry(rng.randrange(len(al)))[0]
        if rng.random() < 0.25:
            serial = serial[:-1] + ("." if serial[-1] != "." else "-")
        out.append(serial)
    return out


def bench_allowlist(path: Path, qs: list[str]) -> dict[str, float]:
    opens = []
    for _ in range(21):
        start = time.perf_counter()
        Allowlist.open(path, verify=False)
        opens.append(time.perf_counter() - start)
    size = path.stat().st_size
    verify_s = statistics.median(_timed(lambda: Allowlist.open(path, verify=True)) for _ in range(RUNS))
    al = Allowlist.open(path)
    get = al.get

    def singles() -> None:
        for q in qs:
            get(q)

    def batches(fn: Callable[[list[str]], object], size: int = 1000) -> Callable[[], None]:
        def run() -> None:
            for i in range(0, len(qs), size):
                fn(qs[i : i + size])

        return run

    return {
        "load_average_1min": os.getloadavg()[0],  # the machine is shared: > 1 means another job competed
        "entries": len(al),
        "file_bytes": size,
        "bytes_per_entry": size / max(len(al), 1),
        "open_ms_median": statistics.median(opens) * 1000,
        "open_ms_max": max(opens) * 1000,
        "verify_s": verify_s,
        "verify_gb_s": size / verify_s / 1e9,
        "single_per_s": median_rate(len(qs), singles),
        "get_many_per_s": median_rate(len(qs), batches(al.get_many)),
        "get_many_ids_per_s": median_rate(len(qs), batches(al.get_many_ids)),
    }


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_baselines(rows: int, qs: list[str], tmp: Path) -> dict[str, dict[str, float]]:
    """dict, SQLite (WITHOUT ROWID primary key) and numpy.searchsorted over the first `rows` demo serials."""
    import numpy as np

    data = []
    for start in range(0, rows, 1_000_000):
        data += demo_csv_rows(min(1_000_000, rows - start), start=start)
    results: dict[str, dict[str, float]] = {}

    table = dict(data)

    def dict_singles() -> None:
        get = table.get
        for q in qs:
            get(q)

    results["dict"] = {"single_per_s": median_rate(len(qs), dict_singles)}
    table.clear()
    gc.collect()

    db_path = tmp / f"baseline-{rows}.sqlite3"
    if not db_path.exists():
        db = sqlite3.connect(db_path)
        db.execute("CREATE TABLE allowlist (serial TEXT PRIMARY KEY, market TEXT NOT NULL) WITHOUT ROWID")
        db.executemany("INSERT INTO allowlist VALUES (?, ?)", sorted(data))
        db.commit()
        db.close()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA mmap_size = 17179869184")
    stmt = "SELECT market FROM allowlist WHERE serial = ?"

    def sqlite_singles() -> None:
        for q in qs:
            db.execute(stmt, (q,)).fetchone()

    def sqlite_batches() -> None:
        for i in range(0, len(qs), 500):
            chunk = qs[i : i + 500]
            found = dict(
                db.execute(
                    f"SELECT serial, market FROM allowlist WHERE serial IN ({','.join('?' * len(chunk))})", chunk
                )
            )
            [found.get(q) for q in chunk]

    sqlite_batches()  # warm the page cache
    results["sqlite"] = {
        "single_per_s": median_rate(len(qs), sqlite_singles),
        "batch_per_s": median_rate(len(qs), sqlite_batches),
    }
    db.close()

    # numpy: sorted 64-bit hashes of the serials (the C codec's hash), market ids alongside; no exact match
    keys = np.fromiter((_check_codec(s)[1] for s, _ in data), dtype=np.uint64, count=len(data))
    market_names = sorted({m for _, m in data})
    ids = np.fromiter((market_names.index(m) for _, m in data), dtype=np.int8, count=len(data))
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    del data, order
    gc.collect()

    def numpy_singles() -> None:
        for q in qs:
            h = np.uint64(_check_codec(q)[1])
            i = np.searchsorted(keys, h)
            _ = int(ids[i]) if i < len(keys) and keys[i] == h else None

    def numpy_batches() -> None:
        for i in range(0, len(qs), 1000):
            h = np.fromiter((_check_codec(q)[1] for q in qs[i : i + 1000]), dtype=np.uint64)
            pos = np.minimum(np.searchsorted(keys, h), len(keys) - 1)
            np.where(keys[pos] == h, ids[pos], -1)

    hashes = np.fromiter((_check_codec(q)[1] for q in qs), dtype=np.uint64, count=len(qs))
    results["numpy"] = {
        "single_per_s": median_rate(len(qs), numpy_singles),
        "batch_per_s": median_rate(len(qs), numpy_batches),
        "batch_presorted_hashes_per_s": median_rate(len(qs), lambda: np.searchsorted(keys, hashes)),
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--baseline-rows", type=int, default=10_000_000, help="rows for dict/SQLite/numpy")
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--skip-build", action="store_true", help="reuse the built file if present")
    args = parser.parse_args(argv)
    DATA.mkdir(exist_ok=True)
    csv_path = DATA / f"allowlist-demo-{args.rows}.csv"
    out = DATA / f"allowlist-demo-{args.rows}.rlallow"
    if not csv_path.exists():
        write_demo_csv(args.rows, csv_path)
    report: dict[str, object] = {"rows": args.rows, "cpus": os.cpu_count()}
    if not (args.skip_build and out.exists()):
        report["build"] = build(args.rows, csv_path, out)
        print(json.dumps(report["build"]), flush=True)
    al = Allowlist.open(out)
    qs = queries(al, args.queries)
    report["allowlist"] = bench_allowlist(out, qs)
    print(json.dumps(report["allowlist"]), flush=True)
    report["ceiling"] = machine_ceiling(args.rows, args.queries)
    if report["ceiling"]:
        ceiling = report["ceiling"]["bucket_index_per_s"]
        for key in ("single_per_s", "get_many_per_s"):
            report["allowlist"][f"{key}_of_c_index"] = report["allowlist"][key] / ceiling
        print(json.dumps(report["ceiling"]), flush=True)
    if args.baseline_rows:
        small = DATA / f"allowlist-demo-{args.baseline_rows}.rlallow"
        if args.baseline_rows != args.rows:
            if not small.exists():
                from regionlock.core.allowlist_build import build_demo_allowlist

                build_demo_allowlist(args.baseline_rows, small)
            sqs = queries(Allowlist.open(small), args.queries, seed=2)
            report["allowlist_at_baseline_rows"] = bench_allowlist(small, sqs)
            print(json.dumps(report["allowlist_at_baseline_rows"]), flush=True)
        else:
            sqs = qs
        report["baselines"] = bench_baselines(args.baseline_rows, sqs, DATA)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
