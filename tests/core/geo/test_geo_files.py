"""Damaged files: refused by open with a clear error, and never a crash, even opened without verify."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from array import array

import pytest

from regionlock.core.errors import CorruptFileError, DataFileError, FormatVersionError
from regionlock.core.fileformat import PREAMBLE, write_data_file
from regionlock.core.geo import FORMAT_VERSION, MAGIC, GeoDatabase
from regionlock.core.geo_aliases import MAXMIND_ALIASES

from support.geo import IPV4_SPELLINGS, ipv4_spelling

ROWS = [
    ("5.0.0.0/8", "DE", "DE-BE"),
    ("5.2.3.0/24", "UA", "UA-40"),
    ("5.2.3.128/25", "UA", "UA-30"),
    ("5.2.3.200/32", "RU", None),
    ("2001:db8::/32", "DE", None),
    ("2001:db8:1::/48", "DE", "DE-HH"),
    ("2001:db8:1::1/128", "FR", None),
]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    from support.geo import build_geo_from_rows

    return build_geo_from_rows(tmp_path_factory.mktemp("geo_files"), ROWS)


def _probes(rng: random.Random) -> tuple[array, bytes, list[str]]:
    v4 = array("I", [0x05020300 + i for i in range(256)] + [rng.getrandbits(32) for _ in range(200)])
    v6 = [
        ipaddress.IPv6Address((0x20010DB8 << 96) | (1 << 80) | rng.getrandbits(rng.choice([0, 8, 64, 80])))
        for _ in range(200)
    ] + [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(50)]
    v6 += [ipv4_spelling(a, kind, rng.getrandbits(96)) for a in v4[::10] for kind in IPV4_SPELLINGS]
    texts = [str(ipaddress.IPv4Address(a)) for a in v4[:20]] + [str(a) for a in v6[:20] + v6[-20:]]
    return v4, b"".join(a.packed for a in v6), texts


def _exercise(db: GeoDatabase, probes) -> None:
    """Every lookup path on a possibly damaged database: answers may be wrong, the process must not crash."""
    v4, v6, texts = probes
    ids = list(db.region_ids_v4(v4)) + list(db.region_ids_v6(v6)) + list(db.region_ids(texts))
    assert all(0 <= i < len(db.regions) for i in ids)
    for region in db.lookup_many(texts):
        if region is not None:
            assert region.network is not None and region.country is not None
    db.leaves_v4(v4)
    db.leaves_v6(v6)


def test_good_file_opens(good):
    db = GeoDatabase.open(good)
    assert db.lookup("5.2.3.200").country == "RU"


@pytest.mark.parametrize("verify", [True, False])
def test_open_serves_a_private_copy(tmp_path, good, verify):
    """Opened, the database no longer reads its file: zeros written over it in place change no answer."""
    path = tmp_path / "c.rlgeo"
    shutil.copyfile(good, path)
    db = GeoDatabase.open(path, verify=verify)
    probes = ["5.2.3.200", "5.2.3.1", "5.9.9.9", "2001:db8:1::1", "2001:db8:2::1", "9.9.9.9"]
    before = db.lookup_many(probes)
    assert sum(r is not None for r in before) == 5
    with open(path, "r+b") as f:
        f.write(bytes(os.path.getsize(path)))
    assert db.lookup_many(probes) == before
    ids = [0 if r is None else db.regions.index((r.country, r.subdivision)) for r in before]
    assert list(db.region_ids(probes)) == ids


SHARING = textwrap.dedent(
    """
    import gc, json, os, sys
    from regionlock.core.fileformat import share_loaded_files
    from regionlock.core.geo import GeoDatabase
    path, shared, probes = sys.argv[1], sys.argv[2], sys.argv[3].split(",")

    def memfds():
        return [line.split()[4] for line in open("/proc/self/maps") if "memfd:regionlock:s.rlgeo" in line]

    def sealed():
        pid, fd = open(os.path.join(shared, [n for n in os.listdir(shared) if "." not in n][0])).read().split()
        copy = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
        refused = []
        for change in (lambda: os.ftruncate(copy, 0), lambda: os.pwrite(copy, b"x", 0)):
            try:
                change()
            except PermissionError:
                refused.append(True)
        return len(refused) == 2

    share_loaded_files(shared)
    first = GeoDatabase.open(path)
    answers = [str(r) for r in first.lookup_many(probes)]
    os.truncate(path, 0)  # the copy is the process's, not the file's
    out = {"sealed": sealed(), "same_after_truncation": [str(r) for r in first.lookup_many(probes)] == answers}
    os.system(f"cp {sys.argv[4]} {path}")
    pid = os.fork()
    if pid == 0:
        second = GeoDatabase.open(path)  # a sibling: maps the parent's copy
        out["sibling"] = memfds()
        out["sibling_same"] = [str(r) for r in second.lookup_many(probes)] == answers
        print(json.dumps(out), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    del first
    gc.collect()
    third = GeoDatabase.open(path)  # the only holder dropped its copy: a new one is made
    print(json.dumps({"again": memfds(), "again_same": [str(r) for r in third.lookup_many(probes)] == answers}))
    """
)


def test_processes_that_share_loads_map_one_sealed_copy(tmp_path, good):
    path = tmp_path / "s.rlgeo"
    shutil.copyfile(good, path)
    shared = tmp_path / "shared"
    shared.mkdir()
    probes = "5.2.3.200,5.2.3.1,9.9.9.9,2001:db8:1::1"
    run = subprocess.run(
        [sys.executable, "-c", SHARING, str(path), str(shared), probes, str(good)],
        capture_output=True,
        text=True,
        check=True,
    )
    child, parent = (json.loads(line) for line in run.stdout.splitlines())
    assert child["sealed"] and child["same_after_truncation"] and child["sibling_same"]
    assert len(child["sibling"]) == 2 and len(set(child["sibling"])) == 1  # inherited and its own: one memfd
    assert len(parent["again"]) == 1 and parent["again_same"]


def test_wrong_magic_and_version_are_refused(tmp_path, good):
    data = bytearray(good.read_bytes())
    data[8:12] = struct.pack("<I", FORMAT_VERSION + 1)
    (tmp_path / "v.rlgeo").write_bytes(data)
    with pytest.raises(FormatVersionError, match="format version 2"):
        GeoDatabase.open(tmp_path / "v.rlgeo", verify=False)
    data = bytearray(good.read_bytes())
    data[0:8] = b"RLALLOW\0"
    (tmp_path / "m.rlgeo").write_bytes(data)
    with pytest.raises(CorruptFileError, match="not a RLGEO file"):
        GeoDatabase.open(tmp_path / "m.rlgeo")


@pytest.mark.slow  # opens the 64 MiB database 1,500 times or more
def test_truncations_are_refused(tmp_path, good):
    path = tmp_path / "t.rlgeo"
    shutil.copyfile(good, path)
    size = os.path.getsize(path)
    rng = random.Random(1)
    sizes = sorted({rng.randrange(size) for _ in range(1500)} | set(range(0, 200)) | {size - 1}, reverse=True)
    for cut in sizes:
        os.truncate(path, cut)
        for verify in (True, False):
            with pytest.raises(CorruptFileError, match=r"t\.rlgeo"):
                GeoDatabase.open(path, verify=verify)


@pytest.mark.slow  # opens the 64 MiB database 1,500 times or more
def test_flipped_bytes_are_refused_with_verify(tmp_path, good):
    path = tmp_path / "f.rlgeo"
    shutil.copyfile(good, path)
    size = os.path.getsize(path)
    rng = random.Random(2)
    header_end = PREAMBLE.size + struct.unpack_from("<I", good.read_bytes(), 16)[0]
    positions = [rng.randrange(header_end) for _ in range(1500)] + [rng.randrange(size) for _ in range(12)]
    with open(path, "r+b") as f:
        for position in positions:
            f.seek(position)
            original = f.read(1)
            f.seek(position)
            f.write(bytes([original[0] ^ (1 << rng.randrange(8))]))
            f.flush()
            if position >= header_end and position < 4096:
                continue  # padding between the metadata and the payload: covered by nothing, used by nothing
            with pytest.raises(DataFileError):
                GeoDatabase.open(path, verify=True)
            f.seek(position)
            f.write(original)
            f.flush()


@pytest.mark.slow  # opens the 64 MiB database 1,500 times or more
def test_flipped_bytes_never_crash_without_verify(tmp_path, good):
    path = tmp_path / "g.rlgeo"
    shutil.copyfile(good, path)
    data = good.read_bytes()
    offset = struct.unpack_from("<Q", data, 24)[0]
    tbl24_used = offset + 4 * (0x050203)  # the tbl24 entries of the probes, and the tail (tbl8 and IPv6)
    tail = offset + 4 * (1 << 24)
    rng = random.Random(3)
    probes = _probes(rng)
    with open(path, "r+b") as f:
        for round_ in range(1500):
            where = rng.choice([(0, 4096), (tbl24_used - 64, tbl24_used + 1024), (tail, len(data))])
            flips = [rng.randrange(*where) for _ in range(rng.choice([1, 2, 8]))]
            for position in flips:
                f.seek(position)
                f.write(bytes([rng.getrandbits(8)]))
            f.flush()
            try:
                db = GeoDatabase.open(path, verify=False)
            except DataFileError:
                pass
            else:
                _exercise(db, probes)
                del db
            if round_ % 10 == 9:  # restore now and then, so that damage does not pile up past use
                f.seek(0)
                f.write(data)
                f.flush()


@pytest.mark.parametrize("seed", range(3))
def test_random_payload_with_a_valid_header_never_crashes(tmp_path, seed):
    rng = random.Random(seed)
    groups, nodes, leaves = rng.choice([0, 1, 7]), rng.choice([0, 1, 50]), rng.choice([0, 1, 90])
    tail = os.urandom(1024 * groups + 4 * 65536 + 24 * nodes + 4 * leaves)
    tbl24 = os.urandom(4 << 16) * 256  # random entries, repeated up to the 64 MiB of tbl24
    path = tmp_path / "r.rlgeo"
    write_data_file(
        path,
        MAGIC,
        FORMAT_VERSION,
        {
            "layout": {"tbl8_groups": groups, "v6_nodes": nodes, "v6_leaves": leaves},
            "regions": [["US", None]] * 3,
            "ipv4_aliases": list(MAXMIND_ALIASES)[: rng.randrange(5)],
        },
        [tbl24, tail],
    )
    db = GeoDatabase.open(path, verify=True)
    _exercise(db, _probes(rng))
    v4 = array("I", [rng.getrandbits(32) for _ in range(20000)])
    db.region_ids_v4(v4)
    db.region_ids_v6(os.urandom(16 * 20000))


@pytest.mark.parametrize(
    "layout",
    [
        None,
        {},
        {"tbl8_groups": -1, "v6_nodes": 0, "v6_leaves": 0},
        {"tbl8_groups": 0, "v6_nodes": 0, "v6_leaves": 1},
        {"tbl8_groups": "0", "v6_nodes": 0, "v6_leaves": 0},
        {"tbl8_groups": 2**40, "v6_nodes": 0, "v6_leaves": 0},
    ],
)
def test_inconsistent_layouts_are_refused(tmp_path, layout):
    path = tmp_path / "l.rlgeo"
    write_data_file(path, MAGIC, FORMAT_VERSION, {"layout": layout, "regions": []}, [bytes(4 * (1 << 24) + 4 * 65536)])
    with pytest.raises(CorruptFileError, match=r"l\.rlgeo"):
        GeoDatabase.open(path, verify=False)


@pytest.mark.parametrize("regions", [None, [["US"]], [[1, None]], [["US", 5]], [["US", None]] * 70000])
def test_bad_region_tables_are_refused(tmp_path, regions):
    path = tmp_path / "r.rlgeo"
    layout = {"tbl8_groups": 0, "v6_nodes": 0, "v6_leaves": 0}
    write_data_file(
        path, MAGIC, FORMAT_VERSION, {"layout": layout, "regions": regions}, [bytes(4 * (1 << 24) + 4 * 65536)]
    )
    with pytest.raises(CorruptFileError, match="region table"):
        GeoDatabase.open(path, verify=False)


def test_deeply_nested_metadata_is_refused(tmp_path, capsys):
    from regionlock.service.cli.main import main

    from support.geo import write_nested_header

    path = write_nested_header(tmp_path / "deep.rlgeo", MAGIC, FORMAT_VERSION)
    for verify in (True, False):
        with pytest.raises(CorruptFileError, match=r"deep\.rlgeo: corrupt: metadata nested deeper than 32"):
            GeoDatabase.open(path, verify=verify)
    for command in (["geo", "info", str(path)], ["geo", "lookup", str(path), "1.2.3.4"]):
        with pytest.raises(SystemExit) as info:
            main(command)
        captured = capsys.readouterr()
        assert info.value.code == 2 and captured.out == ""
        assert captured.err.count("\n") == 1 and "deep.rlgeo: corrupt: metadata nested deeper than 32" in captured.err


@pytest.mark.parametrize(
    "aliases",
    [
        "2002::/16",
        [2002],
        ["2002::/16"] * 2,
        ["2002::1/16"],  # host bits
        ["2002:0:0:0:0:0:0:0/97"],  # longer than /96: no room for an IPv4 address
        ["1.0.0.0/8"],
        ["2002::/16", "2001::/32"],  # out of address order
        ["2000::/3", "2002::/16"],  # nested
        [f"{i:x}::/16" for i in range(1, 18)],  # more than 16
        ["nonsense"],
    ],
)
def test_bad_alias_lists_are_refused(tmp_path, aliases):
    path = tmp_path / "a.rlgeo"
    layout = {"tbl8_groups": 0, "v6_nodes": 0, "v6_leaves": 0}
    metadata = {"layout": layout, "regions": [], "ipv4_aliases": aliases}
    write_data_file(path, MAGIC, FORMAT_VERSION, metadata, [bytes(4 * (1 << 24) + 4 * 65536)])
    with pytest.raises(CorruptFileError, match=r"a\.rlgeo: corrupt: .*alias"):
        GeoDatabase.open(path, verify=False)


def test_a_big_endian_host_is_refused(monkeypatch, good):
    monkeypatch.setattr(sys, "byteorder", "big")
    with pytest.raises(OSError, match="regionlock geo databases are little-endian; this host is not"):
        GeoDatabase.open(good)
