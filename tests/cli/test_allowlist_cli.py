"""The `regionlock allowlist` subcommands, run through their own argparse registration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from regionlock.core import Allowlist
from regionlock.core.allowlist_demo import DEMO_MARKETS, demo_csv_rows
from regionlock.core.allowlist_format import FORMAT_VERSION as ALLOWLIST_VERSION
from regionlock.core.allowlist_format import MAGIC as ALLOWLIST_MAGIC
from regionlock.service.cli.allowlist import register

from support.geo import write_nested_header


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="regionlock")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_build_lookup_info(tmp_path: Path, write_csv, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_csv("a.csv", "serial,market\nR58M1,CN\nR58M2,IN\nbad serial,CN\n")
    out = tmp_path / "a.rl"
    assert run("allowlist", "build", str(source), "-o", str(out), "--memory", "64M", "--skip-invalid") == 0
    captured = capsys.readouterr()
    assert "2 serials from 3 rows" in captured.out
    assert "skipped: a.csv line 4: serial must be" in captured.err
    assert run("allowlist", "lookup", str(out), "r58m1", "R58M9") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"serial": "r58m1", "market": "CN"},
        {"serial": "R58M9", "market": None},
    ]
    assert run("allowlist", "info", str(out)) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 2 and info["markets"] == ["CN", "IN"] and info["rows_skipped"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "{csv}", "-o", "{out}", "--memory", "lots"], "memory size must be"),
        (["build", "{bad}", "-o", "{out}"], "bad.csv line 2: serial must be"),
        (["build", "{tmp}/missing.csv", "-o", "{out}"], "no such file"),
        (["lookup", "{csv}", "X"], "shorter than the header"),
        (["lookup", "{tmp}/missing.rl", "X"], "No such file"),
        (["info", "{csv}"], "shorter than the header"),
        (["info", "{deep}"], "deep.rl: corrupt: metadata nested deeper than 32"),
        (["lookup", "{good}", "no spaces"], "serial must be"),
        (["demo", "-n", "-5", "-o", "{out}"], "demo size must be"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(
    tmp_path: Path, write_csv, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    paths = {
        "csv": write_csv("ok.csv", "serial,market\nA1,CN\n"),
        "bad": write_csv("bad.csv", "serial,market\nx y,CN\n"),
        "out": tmp_path / "out.rl",
        "good": tmp_path / "good.rl",
        "tmp": tmp_path,
        "deep": write_nested_header(tmp_path / "deep.rl", ALLOWLIST_MAGIC, ALLOWLIST_VERSION),
    }
    run("allowlist", "build", str(paths["csv"]), "-o", str(paths["good"]))
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run("allowlist", *[a.format(**{k: str(v) for k, v in paths.items()}) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert message in err


def test_demo_file_and_csv_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("allowlist", "demo", "-n", "5000", "-o", str(tmp_path / "demo.rl"), "--seed", "3") == 0
    assert run("allowlist", "demo", "-n", "5000", "-o", str(tmp_path / "demo.csv"), "--seed", "3", "--csv") == 0
    assert run("allowlist", "build", str(tmp_path / "demo.csv"), "-o", str(tmp_path / "fromcsv.rl")) == 0
    demo = Allowlist.open(tmp_path / "demo.rl")
    from_csv = Allowlist.open(tmp_path / "fromcsv.rl")
    assert demo.build_id == from_csv.build_id
    rows = demo_csv_rows(5000, seed=3)
    assert (tmp_path / "demo.csv").read_text().splitlines()[1:] == [f"{s},{m}" for s, m in rows]
    assert demo.get_many([s for s, _ in rows]) == [m for _, m in rows]


def test_demo_is_deterministic_realistic_and_unique() -> None:
    rows = demo_csv_rows(50_000, seed=0)
    assert rows == demo_csv_rows(50_000, seed=0)
    assert rows[1000:1010] == demo_csv_rows(10, seed=0, start=1000)
    assert rows != demo_csv_rows(50_000, seed=1)
    serials = [s for s, _ in rows]
    assert len(set(serials)) == len(serials)
    assert {len(s) for s in serials} == {13, 15, 17, 18}
    markets = [m for _, m in rows]
    assert set(markets) == set(DEMO_MARKETS)
    shares = {m: markets.count(m) / len(markets) for m in DEMO_MARKETS}
    assert 0.27 < shares["EEA"] < 0.33 and 0.10 < shares["US"] < 0.14
