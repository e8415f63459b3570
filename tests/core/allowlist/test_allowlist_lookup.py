"""Lookups: the compiled reader against a Python dict and the pure-Python reference on random data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regionlock.core import Allowlist, CorruptFileError, allowlist_format
from regionlock.core import _allowlist_reference as ref

from support.allowlist import build_allowlist_from_rows

SERIALS = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/."), min_size=1, max_size=32)


def _variants(serial: str, rng: random.Random) -> list[str]:
    lower = serial.lower()
    mixed = "".join(c.lower() if rng.random() < 0.5 else c for c in serial)
    return [serial, lower, mixed, f"  {serial}\t", f"\u00a0{lower}\n"]


def _absent(rows: dict[str, str], rng: random.Random) -> list[str]:
    """Serials not in rows: near misses (one character changed, one added or dropped) and random ones."""
    out = []
    for serial in list(rows)[:300]:
        i = rng.randrange(len(serial))
        out += [serial[:i] + ("Z" if serial[i] != "Z" else "Y") + serial[i + 1 :], serial + "0", serial[:-1]]
    return [s for s in out if s and len(s) <= 32 and s not in rows]


@pytest.mark.parametrize("seed", [1, 2])
def test_random_differential(tmp_path: Path, make_rows, seed: int) -> None:
    rng = random.Random(seed)
    rows = make_rows(seed, 3000)
    path = build_allowlist_from_rows(tmp_path, sorted(rows.items()))
    allowlist = Allowlist.open(path)
    reference = ref.Allowlist.open(path)
    assert len(allowlist) == len(reference) == len(rows)
    for serial, market in rows.items():
        for variant in _variants(serial, rng):
            assert allowlist.get(variant) == market == reference.get(variant)
    absent = _absent(rows, rng)
    assert len(absent) > 500
    for serial in absent:
        assert allowlist.get(serial) is None
        assert reference.get(serial) is None
        assert serial not in allowlist
    queries = list(rows) + absent
    rng.shuffle(queries)
    expected = [rows.get(q) for q in queries]
    assert allowlist.get_many(queries) == expected
    assert allowlist.get_many(iter(queries)) == expected
    markets = allowlist.markets
    assert [markets[i] if i >= 0 else None for i in allowlist.get_many_ids(queries)] == expected
    assert sorted(allowlist.entry(i) for i in range(len(allowlist))) == sorted(rows.items())
    assert [allowlist.entry(i) for i in range(len(allowlist))] == [reference.entry(i) for i in range(len(rows))]
    assert allowlist.markets == sorted(set(rows.values())) == reference.markets
    assert allowlist.build_id == reference.build_id


def test_shared_prefixes_and_max_length(tmp_path: Path) -> None:
    base = "A" * 31
    rows = {base + c: "CN" for c in "0123456789ABCDEF"} | {base[:k]: "IN" for k in range(1, 32)}
    rows["Z" * 32] = "EEA"
    allowlist = Allowlist.open(build_allowlist_from_rows(tmp_path, list(rows.items())))
    for serial, market in rows.items():
        assert allowlist.get(serial) == market
    assert allowlist.get(base + "G") is None
    assert allowlist.get("Z" * 31) is None
    with pytest.raises(ValueError, match="serial must be"):
        allowlist.get("Z" * 33)


def test_one_entry(tmp_path: Path) -> None:
    allowlist = Allowlist.open(build_allowlist_from_rows(tmp_path, [("r58m123abcd", "cn")]))
    assert len(allowlist) == 1
    assert allowlist.get("R58M123ABCD") == "CN"
    assert allowlist.get(" r58M123abcd ") == "CN"
    assert allowlist.get("R58M123ABCE") is None
    assert allowlist.entry(0) == ("R58M123ABCD", "CN")
    assert allowlist.markets == ["CN"]
    assert allowlist.info["count"] == 1


def test_empty(tmp_path: Path) -> None:
    path = build_allowlist_from_rows(tmp_path, [])
    allowlist = Allowlist.open(path)
    assert len(allowlist) == 0
    assert allowlist.get("ANY") is None
    assert allowlist.get_many(["A", "B"]) == [None, None]
    assert allowlist.get_many([]) == []
    assert allowlist.markets == []
    with pytest.raises(IndexError):
        allowlist.entry(0)
    assert len(ref.Allowlist.open(path)) == 0


@pytest.mark.parametrize("bad", ["", "x y", "A" * 33, "ABC#", "é", None, 42, b"ABC"])
def test_invalid_serials_raise_value_error(tmp_path: Path, bad: object) -> None:
    allowlist = Allowlist.open(build_allowlist_from_rows(tmp_path, [("A1", "CN")]))
    with pytest.raises(ValueError, match="serial must be"):
        allowlist.get(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"serials\[1\]: serial must be"):
        allowlist.get_many(["A1", bad])  # type: ignore[list-item]
    assert bad not in allowlist


def test_entry_bounds(tmp_path: Path) -> None:
    allowlist = Allowlist.open(build_allowlist_from_rows(tmp_path, [("A1", "CN"), ("B2", "IN")]))
    with pytest.raises(IndexError):
        allowlist.entry(2)
    with pytest.raises(IndexError):
        allowlist.entry(-1)


def test_info_and_header(tmp_path: Path) -> None:
    allowlist = Allowlist.open(build_allowlist_from_rows(tmp_path, [("A1", "CN"), ("B2", "IN"), ("C3", "IN")]))
    info = allowlist.info
    assert info["magic"] == "RLALLOW"
    assert info["format_version"] == allowlist_format.FORMAT_VERSION
    assert info["count"] == 3
    assert info["markets"] == ["CN", "IN"]
    assert info["market_counts"] == {"CN": 1, "IN": 2}
    assert info["sources"][0]["name"] == "allowlist.csv"
    assert len(info["sources"][0]["sha256"]) == 64
    assert info["build_id"] == allowlist.build_id and len(allowlist.build_id) == 16
    assert "build_time" in info and "payload_sha256" in info
    assert repr(allowlist).startswith("<Allowlist ")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(SERIALS, st.sampled_from(["CN", "IN", "EEA", "US"]), max_size=80),
    st.lists(SERIALS, max_size=40),
)
def test_hypothesis_differential(tmp_path: Path, rows: dict[str, str], probes: list[str]) -> None:
    allowlist = Allowlist.open(build_allowlist_from_rows(tmp_path, list(rows.items())))
    for probe in list(rows) + probes:
        assert allowlist.get(probe) == rows.get(probe)
    assert allowlist.get_many(probes) == [rows.get(p) for p in probes]


def test_corrupt_directory_is_an_error_not_a_crash(tmp_path: Path) -> None:
    rows = [(f"S{i}", "CN") for i in range(2000)]
    path = build_allowlist_from_rows(tmp_path, rows)
    header = Allowlist.open(path).header
    start, length = header.metadata["fine"]
    data = bytearray(path.read_bytes())
    data[header.payload_offset + start : header.payload_offset + start + length] = b"\xff" * length
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):
        Allowlist.open(path, verify=True)
    allowlist = Allowlist.open(path, verify=False)
    with pytest.raises(CorruptFileError, match="corrupt allowlist"):
        allowlist.get_many([s for s, _ in rows])
    with pytest.raises(CorruptFileError, match="corrupt allowlist"):
        for serial, _ in rows:
            allowlist.get(serial)


def test_records_sit_in_the_bucket_of_their_hash(tmp_path: Path, make_rows) -> None:
    rows = make_rows(5, 5000)
    path = build_allowlist_from_rows(tmp_path, list(rows.items()))
    info = Allowlist.open(path).info
    bits = info["bucket_bits"]
    assert info["group_bits"] == allowlist_format.GROUP_BITS
    buckets = ref.bucket_contents(path)
    assert len(buckets) == 1 << bits
    assert sum(len(b) for b in buckets) == len(rows)
    for b, records in enumerate(buckets):
        for serial, market in records:
            assert ref.serial_hash(serial) >> (64 - bits) == b
            assert rows[serial] == market


def test_smaller_groups_when_a_group_overflows(tmp_path: Path, make_rows, monkeypatch: pytest.MonkeyPatch) -> None:
    from regionlock.core import allowlist_build

    split = allowlist_build.split_directory
    monkeypatch.setattr(allowlist_build, "split_directory", lambda d, g: None if g > 2 else split(d, g))
    rows = make_rows(6, 3000)
    path = build_allowlist_from_rows(tmp_path, list(rows.items()))
    allowlist = Allowlist.open(path)
    assert allowlist.info["group_bits"] == 2
    assert allowlist.get_many(list(rows)) == list(rows.values())
    assert sum(len(b) for b in ref.bucket_contents(path)) == len(rows)


def test_an_allowlist_not_opened_is_empty_not_a_crash() -> None:
    with pytest.raises(TypeError, match=r"Allowlist\.open"):
        Allowlist()
    blank = Allowlist.__new__(Allowlist)
    assert blank.get("ABC") is None
    assert blank.get_many(["ABC"]) == [None]
    assert len(blank) == 0
    with pytest.raises(IndexError):
        blank.entry(0)
