"""What the benchmark scripts share: where their data lives and how a rate is measured."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
RUNS = 3


def median_rate(n: int, fn: Callable[[], object], runs: int = RUNS) -> float:
    """Median over runs of n / seconds taken by fn()."""
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)
