"""Building: CSV parsing and errors with line numbers, duplicates, conflicts, external sort determinism."""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regionlock.core import Allowlist, BuildError
from regionlock.core import allowlist_build as builder
from regionlock.core.allowlist_build import build_allowlist, parse_size
from regionlock.core.allowlist_demo import write_demo_csv


def _csv(rows: dict[str, str] | list[tuple[str, str]]) -> str:
    items = rows.items() if isinstance(rows, dict) else rows
    return "serial,market\n" + "".join(f"{s},{m}\n" for s, m in items)


def _payload(path: Path) -> bytes:
    header = Allowlist.open(path).header
    return path.read_bytes()[header.payload_offset :]


def _meta(path: Path) -> dict:
    meta = dict(Allowlist.open(path).info)
    for key in ("build_time", "path"):
        meta.pop(key)
    return meta


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut files into many small pieces and blocks, so both workers and the block carry-over are used."""
    monkeypatch.setattr(builder, "_PIECE", 4096)
    monkeypatch.setattr(builder, "_BLOCK", 1000)


def test_over_budget_build_equals_in_memory_build(
    tmp_path: Path, write_csv, make_rows, small_pieces, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = make_rows(7, 40_000)
    items = list(rows.items())
    rng = random.Random(7)
    items += [(s.lower(), m) for s, m in rng.sample(items, 3000)]  # duplicates, some across runs
    rng.shuffle(items)
    source = write_csv("big.csv", _csv(items))
    spills: list[int] = []
    spill = builder._spill
    monkeypatch.setattr(builder, "_spill", lambda job, buf, w: (spills.append(w), spill(job, buf, w)))
    small = build_allowlist([source], tmp_path / "small.rl", memory=builder.MIN_MEMORY, workers=2)
    assert len(spills) >= 8 and set(spills) == {0, 1}  # many sort runs, from both workers
    monkeypatch.undo()
    big = build_allowlist([source], tmp_path / "big.rl", workers=1)
    assert small.count == big.count == len(rows)
    assert small.duplicates == big.duplicates == 3000
    assert _payload(tmp_path / "small.rl") == _payload(tmp_path / "big.rl")
    assert _meta(tmp_path / "small.rl") == _meta(tmp_path / "big.rl")
    allowlist = Allowlist.open(tmp_path / "small.rl")
    assert all(allowlist.get(s) == m for s, m in rows.items())


def test_conflict_across_runs_names_serial_and_markets(tmp_path: Path, write_csv, make_rows, small_pieces) -> None:
    items = list(make_rows(3, 20_000).items())
    items.append((items[5][0], "US" if items[5][1] != "US" else "CN"))
    source = write_csv("conflict.csv", _csv(items))
    with pytest.raises(BuildError) as info:
        build_allowlist([source], tmp_path / "out.rl", memory=builder.MIN_MEMORY)
    message = str(info.value)
    assert items[5][0] in message
    assert items[5][1] in message and items[-1][1] in message
    assert not (tmp_path / "out.rl").exists()


def test_conflict_within_one_run(tmp_path: Path, write_csv) -> None:
    source = write_csv("c.csv", "serial,market\nAB1,CN\nab1,IN\n")
    with pytest.raises(BuildError, match=r"serial AB1 is listed for markets (CN and IN|IN and CN)"):
        build_allowlist([source], tmp_path / "out.rl")


def test_same_serial_same_market_is_kept_once(tmp_path: Path, write_csv) -> None:
    source = write_csv("d.csv", "serial,market\nAB1,CN\n ab1 ,cn\nAB1,CN\nXY,IN\n")
    report = build_allowlist([source], tmp_path / "out.rl")
    assert (report.count, report.rows_read, report.duplicates) == (2, 4, 2)
    assert Allowlist.open(tmp_path / "out.rl").get("ab1") == "CN"


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (b"AB1,CN\nx y,CN\n", 3, "serial must be 1 to 32 characters"),
        (b"AB1,CN\n" + b"A" * 33 + b",CN\n", 3, "serial must be"),
        (b"AB1,CN\n,CN\n", 3, "serial must be"),
        (b"AB1,C-N\n", 2, "market must be 1 to 16 characters"),
        (b"AB1,\n", 2, "market must be"),
        (b"AB1,CN\nAB2\n", 3, "expected 2 fields, got 1"),
        (b"AB1,CN,extra\n", 2, "expected 2 fields, got 3"),
        (b"AB1,CN\n\xff\xfe,CN\n", 3, "not UTF-8"),
        (b'AB1,CN\n"AB2,CN\n', 3, "bad CSV|serial must be|fields"),
        (b"AB1,CN\n \n", 3, "expected 2 fields"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path: Path, write_csv, body: bytes, line: int, message: str) -> None:
    source = write_csv("bad.csv", b"serial,market\n" + body)
    with pytest.raises(BuildError, match=rf"bad\.csv line {line}: .*({message})"):
        build_allowlist([source], tmp_path / "out.rl")
    assert not (tmp_path / "out.rl").exists()


def test_first_errors_are_listed_in_file_order(tmp_path: Path, write_csv, small_pieces) -> None:
    lines = [f"S{i:06d},CN" for i in range(5000)]
    for bad in (4000, 1200, 3100):
        lines[bad] = f"S {bad},CN"
    source = write_csv("many.csv", "serial,market\n" + "\n".join(lines) + "\n")
    with pytest.raises(BuildError) as info:
        build_allowlist([source], tmp_path / "out.rl", workers=2)
    message = str(info.value)
    assert message.startswith("3 invalid rows: ")
    positions = [message.index(f"many.csv line {n + 2}: ") for n in (1200, 3100, 4000)]
    assert positions == sorted(positions)


def test_build_stops_after_the_first_errors(tmp_path: Path, write_csv, small_pieces) -> None:
    lines = [f"S{i:06d},CN" if i % 100 else f"S {i},CN" for i in range(1, 20_001)]
    source = write_csv("bad.csv", "serial,market\n" + "\n".join(lines) + "\n")
    with pytest.raises(BuildError) as info:
        build_allowlist([source], tmp_path / "out.rl", workers=2)
    message = str(info.value)
    assert message.startswith(f"invalid rows (stopped after {builder.MAX_ERRORS}): ")
    reported = re.findall(r"bad\.csv line (\d+): serial must be .*?\(got 'S (\d+)'\)", message)
    assert len(reported) == builder.MAX_ERRORS
    # line numbers are right even in pieces read by the other worker, or not read to their end
    assert all(int(line) == int(serial) + 1 for line, serial in reported)


def test_skip_invalid_counts_and_reports(tmp_path: Path, write_csv) -> None:
    source = write_csv("s.csv", "serial,market\nAB1,CN\nx y,CN\nAB2,??\nAB3,IN\n")
    report = build_allowlist([source], tmp_path / "out.rl", skip_invalid=True)
    assert (report.count, report.rows_skipped, report.rows_read) == (2, 2, 4)
    assert report.skipped_examples[0].startswith("s.csv line 3: serial must be")
    assert report.skipped_examples[1].startswith("s.csv line 4: market must be")
    allowlist = Allowlist.open(tmp_path / "out.rl")
    assert allowlist.info["rows_skipped"] == 2
    assert allowlist.get_many(["AB1", "AB3"]) == ["CN", "IN"]


def test_csv_dialect_details(tmp_path: Path, write_csv, caplog: pytest.LogCaptureFixture) -> None:
    text = '\ufeffMarket, note ,Serial\r\n"CN","a, quoted note","r58m-1"\r\n\r\nIN,,  sn/2.x_y  \r\neea,n,Z9'
    source = write_csv("dialect.csv", text.encode("utf-8"))
    other = write_csv("other.csv", "serial,market\nQQ1,RU\n")
    with caplog.at_level(logging.WARNING):
        report = build_allowlist([source, other], tmp_path / "out.rl")
    assert "dialect.csv: ignoring extra columns: note" in caplog.text
    assert report.count == 4
    allowlist = Allowlist.open(tmp_path / "out.rl")
    assert allowlist.get_many(["R58M-1", "SN/2.X_Y", "z9", "qq1"]) == ["CN", "IN", "EEA", "RU"]
    assert [s["name"] for s in allowlist.info["sources"]] == ["dialect.csv", "other.csv"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "header must name the columns serial and market"),
        ("serial\nAB1\n", "header must name the columns serial and market"),
        ("serial,market,serial\n", "names the column serial twice"),
    ],
)
def test_header_errors(tmp_path: Path, write_csv, text: str, message: str) -> None:
    source = write_csv("h.csv", text)
    with pytest.raises(BuildError, match=rf"h\.csv line 1: .*{message}"):
        build_allowlist([source], tmp_path / "out.rl")


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no such file"):
        build_allowlist([tmp_path / "nope.csv"], tmp_path / "out.rl")
    with pytest.raises(BuildError, match="no CSV sources"):
        build_allowlist([], tmp_path / "out.rl")


def test_output_is_readable_like_any_new_file(tmp_path: Path, write_csv) -> None:
    source = write_csv("a.csv", "serial,market\nA,CN\n")
    build_allowlist([source], tmp_path / "out.rl")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "out.rl").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv", "out.rl"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == [
        "a.csv",
        "out.rl",
    ]


def test_header_only_gives_an_empty_allowlist(tmp_path: Path, write_csv) -> None:
    source = write_csv("empty.csv", "serial,market\n")
    assert build_allowlist([source], tmp_path / "out.rl").count == 0
    assert len(Allowlist.open(tmp_path / "out.rl")) == 0


def test_progress_reports_phases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "demo.csv"
    write_demo_csv(20_000, source)
    calls: list[tuple[int, float, str]] = []
    build_allowlist([source], tmp_path / "out.rl", progress=lambda *a: calls.append(a))
    assert {c[2] for c in calls} >= {"writing"}
    assert all(rows >= 0 and rate >= 0 for rows, rate, _ in calls)


@pytest.mark.parametrize(("text", "size"), [("1G", 1 << 30), ("512M", 512 << 20), ("64k", 64 << 10), ("100", 100)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5G", "G", "-1M", "12X"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_size(text)


def test_memory_budget_floor(tmp_path: Path, write_csv) -> None:
    source = write_csv("a.csv", "serial,market\nA,CN\n")
    with pytest.raises(ValueError, match="at least"):
        build_allowlist([source], tmp_path / "out.rl", memory=1000)


@pytest.mark.slow
def test_killed_build_leaves_no_output(tmp_path: Path) -> None:
    output = tmp_path / "killed.rl"
    script = (
        "import sys\n"
        "from regionlock.core.allowlist_build import build_demo_allowlist\n"
        "build_demo_allowlist(40_000_000, sys.argv[1], memory=64 << 20)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(output)])
    try:
        deadline = time.monotonic() + 30
        # wait until the build is well under way: sort runs spilled into its temporary folder
        while time.monotonic() < deadline:
            runs = [p for d in tmp_path.glob(".allowlist-build-*") for p in d.iterdir()]
            if len(runs) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not output.exists()
    assert not list(tmp_path.glob("killed.rl*"))
