"""Deterministic demo allowlists: realistic synthetic serials with a plausible mix of markets.

Row i of seed s is always the same serial and market, whatever n. Serials are unique (a bijection of the
row number is encoded in each) and come in four shapes: phone style `R58M` + 9 (13 characters),
IMEI-like `35` + 13 digits (15), `SN-2YWW-` + 10 (18), laptop style `C02` + 8 `/` + 5 (17). Markets are
EEA 30 %, GLOBAL 20 %, CN 15 %, IN 15 %, US 12 %, RU 8 %: the markets the default policy defines.
"""

from __future__ import annotations

import os

from regionlock.core.allowlist_build import DEFAULT_MEMORY, BuildReport, Progress, build_demo_allowlist
from regionlock.core.allowlist_demo_rows import demo_rows
from regionlock.core.fileformat import atomic_output

DEMO_MARKETS = ("EEA", "GLOBAL", "CN", "IN", "US", "RU")
MAX_ROWS = 1 << 40
_CHUNK = 1_000_000

__all__ = ["DEMO_MARKETS", "build_demo_allowlist", "demo_csv_rows", "write_demo_csv"]


def demo_csv_rows(n: int, seed: int = 0, start: int = 0) -> list[tuple[str, str]]:
    """Rows start .. start + n of the demo as (serial, market) tuples (for small n: tests and samples)."""
    _check(n, seed)
    text = bytes(demo_rows(seed, start, n)).decode("ascii")
    return [tuple(line.split(",")) for line in text.splitlines()]  # type: ignore[misc]


def write_demo_csv(n: int, output: str | os.PathLike[str], seed: int = 0, progress: Progress | None = None) -> None:
    """Write the demo as CSV (`serial,market` header), streamed and atomically."""
    _check(n, seed)
    with atomic_output(output) as f:
        f.write(b"serial,market\n")
        for start in range(0, n, _CHUNK):
            f.write(demo_rows(seed, start, min(_CHUNK, n - start)))
            if progress is not None:
                progress(min(start + _CHUNK, n), 0.0, "writing")


def build_demo(
    n: int,
    output: str | os.PathLike[str],
    seed: int = 0,
    *,
    memory: int = DEFAULT_MEMORY,
    progress: Progress | None = None,
) -> BuildReport:
    """build_demo_allowlist with the argument checks of the CLI."""
    _check(n, seed)
    return build_demo_allowlist(n, output, seed, memory=memory, progress=progress)


def _check(n: int, seed: int) -> None:
    if not 0 <= n < MAX_ROWS:
        raise ValueError(f"demo size must be 0 to {MAX_ROWS - 1} rows (got {n})")
    if not 0 <= seed < 1 << 63:
        raise ValueError(f"demo seed must be 0 to 2**63 - 1 (got {seed})")
