"""Damaged files: refused by open with a clear error, and never a crash, even opened without verify."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from regionlock.core import Allowlist, CorruptFileError, DataFileError, FormatVersionError
from regionlock.core.fileformat import PREAMBLE

from support.allowlist import build_allowlist_from_rows


@pytest.fixture
def good_file(tmp_path: Path, make_rows) -> Path:
    return build_allowlist_from_rows(tmp_path, list(make_rows(11, 300).items()))


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_file_is_refused(good_file: Path, verify: bool) -> None:
    data = good_file.read_bytes()
    for size in (0, 10, PREAMBLE.size, 4096, len(data) - 1):
        good_file.write_bytes(data[:size])
        with pytest.raises(CorruptFileError, match=r"truncated|empty"):
            Allowlist.open(good_file, verify=verify)


def test_extended_file_is_refused(good_file: Path) -> None:
    good_file.write_bytes(good_file.read_bytes() + b"\0")
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        Allowlist.open(good_file, verify=False)


def test_payload_corruption_is_caught_by_verify(good_file: Path) -> None:
    data = bytearray(good_file.read_bytes())
    data[-5] ^= 0x40
    good_file.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="payload checksum mismatch"):
        Allowlist.open(good_file)


def test_header_corruption_is_caught_without_verify(good_file: Path) -> None:
    data = bytearray(good_file.read_bytes())
    data[PREAMBLE.size + 5] ^= 0x01  # inside the metadata JSON
    good_file.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="header checksum mismatch"):
        Allowlist.open(good_file, verify=False)


def test_wrong_version_and_magic(good_file: Path) -> None:
    data = bytearray(good_file.read_bytes())
    data[8] = 99
    good_file.write_bytes(bytes(data))
    with pytest.raises(FormatVersionError, match="format version 99"):
        Allowlist.open(good_file)
    data[0:8] = b"RLGEO\0\0\0"
    good_file.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="not a RLALLOW file"):
        Allowlist.open(good_file)


@pytest.mark.parametrize("verify", [True, False])
def test_open_serves_a_private_copy(good_file: Path, make_rows, verify: bool) -> None:
    """Opened, the allowlist no longer reads its file: zeros written over it in place change no answer."""
    serials = [*list(make_rows(11, 300))[:50], "ABSENT1"]
    al = Allowlist.open(good_file, verify=verify)
    before = al.get_many(serials)
    assert before.count(None) == 1
    with open(good_file, "r+b") as f:
        f.write(bytes(good_file.stat().st_size))
    assert al.get_many(serials) == before
    assert [al.get(s) for s in serials] == before


FUZZ = textwrap.dedent(
    """
    import json, random, sys
    from regionlock.core import Allowlist, DataFileError
    good = open(sys.argv[1], "rb").read()
    target = sys.argv[2]
    serials = sys.argv[3].split(",")
    payload = int(sys.argv[4])
    rng = random.Random(int(sys.argv[5]))
    outcomes = {"opened": 0, "refused": 0, "lookup_error": 0}
    for i in range(int(sys.argv[6])):
        data = bytearray(good)
        if i % 4 == 0:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.choice([1, 1, 2, 8])):
                pos = rng.randrange(payload, len(data)) if rng.random() < 0.9 else rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
        with open(target, "wb") as f:
            f.write(data)
        try:
            al = Allowlist.open(target, verify=False)
        except DataFileError:
            outcomes["refused"] += 1
            continue
        outcomes["opened"] += 1
        try:
            for s in serials:
                al.get(s)
            al.get_many(serials)
            al.get_many_ids(serials)
            for j in range(0, len(al), max(1, len(al) // 20)):
                al.entry(j)
            al.info
        except (DataFileError, IndexError):
            outcomes["lookup_error"] += 1
    print(json.dumps(outcomes))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_files_never_crash(tmp_path: Path, good_file: Path, make_rows, seed: int) -> None:
    serials = [*list(make_rows(11, 300))[:60], "ABSENT1", "ZZZ", "A"]
    payload = Allowlist.open(good_file).header.payload_offset
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FUZZ,
            str(good_file),
            str(tmp_path / "fuzz.rl"),
            ",".join(serials),
            str(payload),
            str(seed),
            "3000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = json.loads(result.stdout)
    assert outcomes["opened"] > 500  # payload damage is only found by lookups without verify
    assert outcomes["refused"] > 600


def test_errors_are_value_errors() -> None:
    assert issubclass(CorruptFileError, DataFileError) and issubclass(DataFileError, ValueError)


def test_a_big_endian_host_is_refused(monkeypatch, allowlist_builder):
    path = allowlist_builder([("A-1", "US")])
    monkeypatch.setattr(sys, "byteorder", "big")
    with pytest.raises(OSError, match="regionlock allowlists are little-endian; this host is not"):
        Allowlist.open(path)
