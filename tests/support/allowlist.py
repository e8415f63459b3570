"""Pytest plugin: allowlist files built with the project's own builder, for any area's tests."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from regionlock.core.allowlist_build import build_allowlist


def build_allowlist_from_rows(tmp_path: Path, rows: list[tuple[str, str]], name: str = "allowlist") -> Path:
    """Write rows as `serial,market` CSV under tmp_path and build `<name>.rlallow` from it; return its path."""
    source = tmp_path / f"{name}.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["serial", "market"])
        writer.writerows(rows)
    output = tmp_path / f"{name}.rlallow"
    build_allowlist([source], output, memory=8 << 20, workers=1)
    return output


@pytest.fixture
def allowlist_builder(tmp_path: Path):
    """A function rows -> path of a built allowlist file (in this test's tmp_path)."""
    counter = iter(range(1_000_000))

    def build(rows: list[tuple[str, str]]) -> Path:
        return build_allowlist_from_rows(tmp_path, rows, name=f"allowlist{next(counter)}")

    return build


@pytest.fixture
def write_csv(tmp_path: Path):
    """A function (name, text) -> path writing a CSV file under tmp_path."""

    def write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return write
