"""Fixtures of the allowlist suite: random serials and small allowlist files built by the real builder."""

from __future__ import annotations

import random
import string

import pytest

SERIAL_ALPHABET = string.ascii_uppercase + string.digits + "-_/."
MARKETS = ["EEA", "CN", "IN", "RU", "GLOBAL", "US"]


def random_serial(rng: random.Random, lo: int = 1, hi: int = 32) -> str:
    return "".join(rng.choice(SERIAL_ALPHABET) for _ in range(rng.randint(lo, hi)))


def random_rows(seed: int, n: int) -> dict[str, str]:
    """n distinct random serials (upper case), each with a market; some share long prefixes."""
    rng = random.Random(seed)
    rows: dict[str, str] = {}
    prefix = "R58M" + "0" * 20
    while len(rows) < n:
        kind = rng.random()
        if kind < 0.2:
            serial = prefix[: rng.randint(4, 24)] + random_serial(rng, 1, 8)
        elif kind < 0.3:
            serial = random_serial(rng, 32, 32)
        else:
            serial = random_serial(rng)
        rows[serial] = rng.choice(MARKETS)
    return rows


@pytest.fixture
def make_rows():
    """random_rows(seed, n): n distinct random serials with markets, some sharing long prefixes."""
    return random_rows
