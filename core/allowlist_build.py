"""Build an allowlist file from CSV: parse on both cores, external sort in bounded memory, merge, write."""

from __future__ import annotations

import array
import csv
import itertools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from regionlock.core import allowlist_format as fmt
from regionlock.core.allowlist_demo_rows import demo_rows
from regionlock.core.allowlist_sort import REC_SIZE, Merger, RunBuffer, split_directory
from regionlock.core.errors import BuildError
from regionlock.core.fileformat import FileHeader, build_time, source_info, write_data_file
from regionlock.core.serials import normalize_market, normalize_serial

log = logging.getLogger(__name__)

DEFAULT_MEMORY = 1 << 30
MIN_MEMORY = 1 << 18
MAX_RUNS = 1000
MAX_ERRORS = 10
_BLOCK = 8 << 20
_PIECE = 64 << 20
_DEMO_PIECE = 4_000_000
_DEMO_BLOCK = 500_000

Progress = Callable[[int, float, str], None]
"""progress(rows read, rows per second, phase) — phase is "reading", "merging" or "writing"."""


@dataclass
class BuildReport:
    """What a build did: the header written and the row counts."""

    output: str
    header: FileHeader
    count: int
    rows_read: int
    rows_skipped: int
    duplicates: int
    seconds: float
    skipped_examples: list[str] = field(default_factory=list)


def parse_size(text: str) -> int:
    """A memory size such as 512M, 1G, 64K or 1048576 (binary units) in bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"memory size must be a number with an optional K, M, G or T suffix (got {text!r})")
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[match.group(2).upper()]


@dataclass
class _Source:
    name: str
    path: str | None
    serial_col: int = 0
    market_col: int = 1
    ncols: int = 2
    pieces: list[tuple[int, int]] = field(default_factory=list)  # (start, end) bytes, or (first row, rows)
    piece_lines: list[int] = field(default_factory=list)
    demo_seed: int = 0


@dataclass
class _Job:
    sources: list[_Source]
    budget: int
    skip_invalid: bool
    tmpdir: str
    workers: int
    max_errors: int = MAX_ERRORS
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    queue: list[tuple[int, int]] = field(default_factory=list)
    runs: list[tuple[str, int, int]] = field(default_factory=list)  # (path, records, worker)
    errors: list[tuple[int, int, int, str]] = field(default_factory=list)  # (source, piece, line, message)
    error_count: int = 0
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)
    duplicates: int = 0
    buffers: list[RunBuffer] = field(default_factory=list)
    failure: BaseException | None = None


def _read_header(path: str) -> tuple[_Source, int]:
    """The column layout from a CSV's header line, and the offset of the first data line."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        text = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise BuildError(f"{name} line 1: the header is not UTF-8") from None
    columns = [c.strip().lower() for c in next(csv.reader([text]), [])]
    if "serial" not in columns or "market" not in columns:
        raise BuildError(f"{name} line 1: the header must name the columns serial and market (got {text[:100]!r})")
    for column in ("serial", "market"):
        if columns.count(column) > 1:
            raise BuildError(f"{name} line 1: the header names the column {column} twice")
    extra = [c for c in columns if c not in ("serial", "market")]
    if extra:
        log.warning("%s: ignoring extra columns: %s", name, ", ".join(extra))
    source = _Source(name, path, columns.index("serial"), columns.index("market"), len(columns))
    return source, len(first)


def _split_file(source: _Source, start: int, workers: int) -> None:
    """Cut the data lines of a file into pieces that start at line starts."""
    assert source.path is not None
    size = os.path.getsize(source.path)
    piece = max(_PIECE, (size - start) // (4 * workers) + 1) if size - start > _PIECE else size
    cuts = [start]
    with open(source.path, "rb") as f:
        nominal = start + piece
        while nominal < size:
            f.seek(nominal - 1)
            f.readline()
            cut = f.tell()
            if cut >= size:
                break
            if cut > cuts[-1]:
                cuts.append(cut)
            nominal = cut + piece
    cuts.append(size)
    source.pieces = [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
    source.piece_lines = [0] * len(source.pieces)


def _file_blocks(path: str, start: int, end: int) -> Iterator[bytes]:
    """Blocks of complete lines (each ending with a newline) of path[start:end]."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        carry = b""
        while pos < end:
            data = f.read(min(_BLOCK, end - pos))
            if not data:
                break
            pos += len(data)
            data = carry + data if carry else data
            if pos >= end:
                carry = b""
                yield data if data.endswith(b"\n") else data + b"\n"
            else:
                cut = data.rfind(b"\n") + 1
                carry = data[cut:]
                if cut:
                    yield data[:cut]
        if carry:
            yield carry + b"\n"


def _blocks(source: _Source, piece: tuple[int, int]) -> Iterator[bytes]:
    if source.path is not None:
        yield from _file_blocks(source.path, *piece)
    else:
        first, rows = piece
        for row in range(first, first + rows, _DEMO_BLOCK):
            yield bytes(demo_rows(source.demo_seed, row, min(_DEMO_BLOCK, first + rows - row)))


def _slow_row(line: bytes, source: _Source) -> tuple[str, str] | str | None:
    """(serial, market) of a line the C parser left, None for a blank line, or an error message."""
    try:
        text = line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return "the line is not UTF-8"
    if text == "":
        return None
    try:
        fields = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        return f"bad CSV: {exc}"
    if len(fields) != source.ncols:
        return f"expected {source.ncols} fields, got {len(fields)}"
    try:
        return normalize_serial(fields[source.serial_col]), normalize_market(fields[source.market_col])
    except ValueError as exc:
        return str(exc)


def _spill(job: _Job, buf: RunBuffer, worker: int) -> None:
    if buf.size == 0:
        return
    dups, conflicts = buf.sort_dedup()
    fd, path = tempfile.mkstemp(prefix="run-", suffix=".bin", dir=job.tmpdir)
    with os.fdopen(fd, "wb") as f:
        buf.write_to(f)
    with job.lock:
        job.duplicates += dups
        job.conflicts += conflicts
        job.runs.append((path, buf.size, worker))
        if len(job.runs) > MAX_RUNS:
            job.failure = job.failure or BuildError(
                f"more than {MAX_RUNS} sort runs: give the build more memory (--memory)"
            )
            job.stop.set()
        if conflicts:
            job.stop.set()
    buf.clear()


def _worker(job: _Job, worker: int) -> None:
    buf = job.buffers[worker]
    try:
        while not job.stop.is_set():
            with job.lock:
                if not job.queue:
                    break
                si, pi = job.queue.pop(0)
            source = job.sources[si]
            lines_at_start = buf.lines
            for block in _blocks(source, source.pieces[pi]):
                pos = 0
                while True:
                    pos, status = buf.parse(block, pos, source.serial_col, source.market_col, source.ncols)
                    if status == 0:
                        break
                    if status == 1:
                        _spill(job, buf, worker)
                        continue
                    end = block.index(b"\n", pos)
                    row = _slow_row(block[pos:end], source)
                    if isinstance(row, tuple):
                        buf.add(*row)
                        buf.count_line(True)
                    elif row is None:
                        buf.count_line(False)
                    else:
                        with job.lock:
                            job.error_count += 1
                            if len(job.errors) < 1000:
                                job.errors.append((si, pi, buf.lines - lines_at_start, row))
                            if not job.skip_invalid and job.error_count >= job.max_errors:
                                job.stop.set()
                        buf.count_line(False)
                    pos = end + 1
                if job.stop.is_set():
                    break
            else:
                source.piece_lines[pi] = buf.lines - lines_at_start  # only for a piece read to its end
        if not job.stop.is_set():
            _spill(job, buf, worker)
    except BaseException as exc:
        with job.lock:
            job.failure = job.failure or exc
        job.stop.set()


def _error_text(job: _Job) -> list[str]:
    """The collected row errors as 'file line N: message', in file order."""
    out = []
    for si, pi, local, message in sorted(job.errors)[: job.max_errors]:
        source = job.sources[si]
        if source.path is None:
            out.append(f"{source.name} row {sum(source.pieces[pi]) - source.pieces[pi][1] + local + 1}: {message}")
            continue
        if all(source.piece_lines[:pi]):
            line = 2 + sum(source.piece_lines[:pi]) + local
        else:  # an earlier piece was not read to its end (the build stopped early): count its lines
            line = 1 + sum(data.count(b"\n") for data in _read_file(source.path, end=source.pieces[pi][0])) + local
        out.append(f"{source.name} line {line}: {message}")
    return out


def _conflict_error(conflicts: list[tuple[str, str, str]]) -> BuildError:
    shown = "; ".join(f"serial {s} is listed for markets {a} and {b}" for s, a, b in conflicts[:MAX_ERRORS])
    more = f" (and {len(conflicts) - MAX_ERRORS} more)" if len(conflicts) > MAX_ERRORS else ""
    return BuildError(f"conflicting markets: {shown}{more}")


def _read_file(path: str, chunk: int = _BLOCK, end: int | None = None) -> Iterator[bytes]:
    """The bytes of path[:end] in chunks."""
    left = end if end is not None else -1
    with open(path, "rb") as f:
        while left and (data := f.read(chunk if left < 0 else min(chunk, left))):
            left -= len(data) if left > 0 else 0
            yield data


def _coarse_directory(path: str, step: int) -> Iterator[bytes]:
    """Every step-th uint64 of the fine directory: the directory for fewer bucket bits."""
    if step == 1:
        yield from _read_file(path)
        return
    for data in _read_file(path, 8 * step * max(1, 65536 // step)):
        arr = array.array("Q")
        arr.frombytes(data)
        yield arr[::step].tobytes()


def _split_directory(tmpdir: str, step: int, bits: int, records_len: int) -> tuple[int, array.array[int]]:
    """Turn the merge's directory into the coarse table (returned) and fine.bin; return the group bits used.

    Groups of 64 buckets unless a group's records span 64 KiB or more (only with pathological hash
    collisions): then smaller groups, down to one bucket per group (a plain uint64 directory).
    """
    buckets = 1 << bits
    final = os.path.join(tmpdir, "dir-final.bin")
    with open(final, "wb") as f:
        for data in _coarse_directory(os.path.join(tmpdir, "dir.bin"), step):
            f.write(data)
    for gbits in range(min(fmt.GROUP_BITS, bits), -1, -1):
        coarse = array.array("Q")
        with open(os.path.join(tmpdir, "fine.bin"), "wb") as fine_out:
            for data in _read_file(final, 8 * 65536, end=8 * buckets):
                parts = split_directory(memoryview(data).cast("Q"), gbits)
                if parts is None:
                    break
                coarse.extend(parts[0])
                fine_out.write(parts[1])
            else:
                coarse.append(records_len)
                return gbits, coarse
    raise AssertionError("a one-bucket group always fits")


def _run_job(job: _Job, progress: Progress | None, started: float) -> None:
    threads = [threading.Thread(target=_worker, args=(job, w), daemon=True) for w in range(job.workers)]
    for t in threads:
        t.start()
    try:
        while alive := [t for t in threads if t.is_alive()]:
            alive[0].join(0.25)
            if progress is not None:
                rows = sum(b.lines for b in job.buffers)
                progress(rows, rows / max(time.monotonic() - started, 1e-9), "reading")
    finally:
        job.stop.set()  # on an interrupt, stop the workers before their folder is removed
        for t in threads:
            t.join()
    if job.failure is not None:
        raise job.failure


def _build(
    sources: list[_Source],
    output: str | os.PathLike[str],
    source_meta: list[dict[str, Any]],
    memory: int,
    skip_invalid: bool,
    progress: Progress | None,
    workers: int | None,
    tmp_dir: str | os.PathLike[str] | None,
) -> BuildReport:
    started = time.monotonic()
    output = os.fspath(output)
    if memory < MIN_MEMORY:
        raise ValueError(f"memory budget must be at least {MIN_MEMORY >> 10} KiB")
    workers = max(1, min(workers or min(2, os.cpu_count() or 1), 8))
    reserve = min(memory // 8, 32 << 20)
    capacity = max((memory - reserve) // workers // REC_SIZE, 64)
    tmpdir = tempfile.mkdtemp(prefix=".allowlist-build-", dir=tmp_dir or os.path.dirname(os.path.abspath(output)))
    try:
        job = _Job(sources, memory, skip_invalid, tmpdir, workers)
        job.queue = [(si, pi) for si, s in enumerate(sources) for pi in range(len(s.pieces))]
        job.buffers = [RunBuffer(capacity) for _ in range(workers)]
        _run_job(job, progress, started)
        if job.errors and not skip_invalid:
            errors = _error_text(job)
            if job.error_count >= job.max_errors:  # the build stopped there
                raise BuildError(f"invalid rows (stopped after {len(errors)}): " + "; ".join(errors))
            rows = "invalid row" if job.error_count == 1 else "invalid rows"
            raise BuildError(f"{job.error_count} {rows}: " + "; ".join(errors))
        if job.conflicts:
            raise _conflict_error(job.conflicts)
        rows_read = sum(b.rows for b in job.buffers) + job.error_count
        markets = sorted({m for b in job.buffers for m in b.markets})
        if len(markets) > fmt.MAX_MARKETS:
            raise BuildError(f"{len(markets)} distinct markets, at most {fmt.MAX_MARKETS} are supported")
        skipped = _error_text(job) if skip_invalid else []
        worker_markets = [list(b.markets) for b in job.buffers]
        del job.buffers[:]  # free the sort buffers before merging
        fine_bits = fmt.bucket_bits_for(sum(r[1] for r in job.runs))
        merger = _merge(job, worker_markets, markets, fine_bits, progress, started)
        if merger.conflicts:
            raise _conflict_error(merger.conflicts)
        count = merger.count
        bits = fmt.bucket_bits_for(count)
        samples = merger.samples
        gbits, coarse = _split_directory(tmpdir, 1 << (fine_bits - bits), bits, merger.records_len)
        coarse_len = len(coarse) * 8
        fine_len = (2 * (1 << bits) + 7) // 8 * 8
        smp_len = len(samples) * 8
        rec_len = merger.records_len
        metadata: dict[str, Any] = {
            "kind": "regionlock-allowlist",
            "build_time": build_time(),
            "sources": source_meta,
            "count": count,
            "rows_read": rows_read,
            "rows_skipped": job.error_count,
            "duplicates": rows_read - job.error_count - count,
            "markets": markets,
            "market_counts": dict(zip(markets, merger.market_counts, strict=True)),
            "hash": fmt.HASH_NAME,
            "sample_stride": fmt.SAMPLE_STRIDE,
            "bucket_bits": bits,
            "group_bits": gbits,
            "coarse": [0, coarse_len],
            "fine": [coarse_len, fine_len],
            "samples": [coarse_len + fine_len, smp_len],
            "records": [coarse_len + fine_len + smp_len, rec_len],
        }

        def chunks() -> Iterator[bytes]:
            yield coarse.tobytes()
            yield from _read_file(os.path.join(tmpdir, "fine.bin"))
            yield bytes(fine_len - 2 * (1 << bits))
            yield samples.tobytes()
            for data in _read_file(os.path.join(tmpdir, "records.bin")):
                if progress is not None:
                    progress(rows_read, rows_read / max(time.monotonic() - started, 1e-9), "writing")
                yield data

        header = write_data_file(output, fmt.MAGIC, fmt.FORMAT_VERSION, metadata, chunks())
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return BuildReport(
        output,
        header,
        count,
        rows_read,
        metadata["rows_skipped"],
        metadata["duplicates"],
        time.monotonic() - started,
        skipped,
    )


def _merge(
    job: _Job,
    worker_markets: list[list[str]],
    markets: list[str],
    fine_bits: int,
    progress: Progress | None,
    started: float,
) -> Merger:
    """Merge the sorted runs into records.bin and dir.bin in the temporary folder (in a thread, for progress)."""
    run_files = [open(path, "rb") for path, _, _ in job.runs]  # noqa: SIM115 - closed below
    try:
        runs: list[tuple[BinaryIO, int, list[str]]] = [
            (f, count, worker_markets[w]) for f, (_, count, w) in zip(run_files, job.runs, strict=True)
        ]
        buf_bytes = min(4 << 20, max(64 << 10, job.budget // 2 // max(len(runs), 1)))
        merger = Merger(runs, markets, fine_bits, buf_bytes)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with (
                    open(os.path.join(job.tmpdir, "records.bin"), "wb") as records,
                    open(os.path.join(job.tmpdir, "dir.bin"), "wb") as directory,
                ):
                    merger.run(records, directory)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.25)
            if progress is not None:
                done = merger.count + merger.duplicates
                progress(done, done / max(time.monotonic() - started, 1e-9), "merging")
        if failure:
            raise failure[0]
    finally:
        for f in run_files:
            f.close()
    for path, _, _ in job.runs:
        os.unlink(path)
    return merger


def build_allowlist(
    sources: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    memory: int = DEFAULT_MEMORY,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> BuildReport:
    """Build an allowlist file at `output` from CSV files with the header `serial,market`.

    Raises BuildError naming file and line for invalid rows (unless skip_invalid: then they are counted
    and the first are listed in the report) and for a serial listed with two markets.
    """
    if not sources:
        raise BuildError("no CSV sources given")
    paths = [os.fspath(p) for p in sources]
    workers_n = max(1, min(workers or min(2, os.cpu_count() or 1), 8))
    parsed = []
    for path in paths:
        if not os.path.isfile(path):
            raise BuildError(f"{path}: no such file")
        source, start = _read_header(path)
        _split_file(source, start, workers_n)
        parsed.append(source)
    return _build(parsed, output, source_info(paths), memory, skip_invalid, progress, workers, tmp_dir)


def build_demo_allowlist(
    n: int,
    output: str | os.PathLike[str],
    seed: int = 0,
    *,
    memory: int = DEFAULT_MEMORY,
    progress: Progress | None = None,
    workers: int | None = None,
) -> BuildReport:
    """Build the demo allowlist of `n` synthetic serials (see allowlist_demo) without writing CSV."""
    source = _Source("demo", None, demo_seed=seed)
    source.pieces = [(row, min(_DEMO_PIECE, n - row)) for row in range(0, n, _DEMO_PIECE)]
    source.piece_lines = [0] * len(source.pieces)
    meta = [{"name": "demo", "seed": seed, "rows": n}]
    return _build([source], output, meta, memory, False, progress, workers, None)
