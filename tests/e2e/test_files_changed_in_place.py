"""Data files changed under a running `regionlock serve` (truncated, overwritten in place, `cp` over them):
the workers keep serving what they verified, and only a reload that verifies new content swaps it in."""

import os
import shutil
import signal
import subprocess
import time

import grpc
import pytest

from regionlock.core.allowlist import Allowlist
from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.allowlist import build_allowlist_from_rows
from support.service import (
    ALLOWLIST_ROWS,
    IP_BEIJING,
    IP_BERLIN,
    IP_CRIMEA,
    start_server_process,
    stop_server_process,
    write_world,
)

PROBES = [
    ("EEA-0001", IP_BERLIN),
    ("CN-0001", IP_BERLIN),
    ("GLOBAL-0001", IP_CRIMEA),
    ("US-0001", IP_BEIJING),
    ("NEW-0001", IP_BERLIN),
    ("EEA-0001", "2001:db8:1::1"),
]
# the same serials, sizes and markets as ALLOWLIST_ROWS, two markets swapped: a file of the very same size
SWAPPED_ROWS = [("EEA-0001", "CN"), ("CN-0001", "EEA"), ("US-0001", "US"), ("GLOBAL-0001", "GLOBAL")]
WORKERS = 2


def answers(address: str) -> list[tuple]:
    """What the server says to every probe, by CheckDevice and by CheckDevices (verdict, reason, data versions)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DeviceCheckServiceStub(channel)
        requests = [pb.CheckDeviceRequest(serial=s, ip=ip) for s, ip in PROBES]
        unary = [stub.CheckDevice(r, timeout=10) for r in requests]
        batch = [r.response for r in stub.CheckDevices(pb.CheckDevicesRequest(checks=requests), timeout=10).results]
    return [(r.verdict, r.reason, r.versions.geo, r.versions.allowlist) for r in unary + batch]


def reload_and_wait(server, what: str) -> None:
    """SIGHUP, then wait until every process (the workers and Admin) has logged `what` once more."""
    before = server.log().count(what)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while server.log().count(what) < before + WORKERS + 1:
        assert time.monotonic() < deadline, f"no {what!r} from every process:\n{server.log()}"
        time.sleep(0.05)


def overwrite_in_place(path, data: bytes) -> None:
    """Write over the file's own bytes, keeping its inode and size: what a careless tool does."""
    with open(path, "r+b") as f:
        f.write(data)


@pytest.fixture
def server(tmp_path):
    world = write_world(tmp_path / "world")
    process = start_server_process(world, tmp_path, "--workers", str(WORKERS))
    yield world, process
    assert stop_server_process(process) == 0, process.log()


def test_files_changed_in_place_never_crash_and_serve_only_verified_content(server, tmp_path):
    world, process = server
    saved = tmp_path / "saved"
    saved.mkdir()
    geo_copy = shutil.copy(world.geo_path, saved / "geo.rlgeo")
    swapped = build_allowlist_from_rows(saved, SWAPPED_ROWS, name="swapped")
    bigger = build_allowlist_from_rows(saved, [*ALLOWLIST_ROWS, ("NEW-0001", "EEA")], name="bigger")
    assert os.path.getsize(swapped) == os.path.getsize(world.allowlist_path)
    loaded = answers(process.check_addr)
    assert {a[1] for a in loaded[:5]} == {
        pb.REASON_AUTHORIZED,
        pb.REASON_GRAY_IMPORT,
        pb.REASON_REGION_RESTRICTED,
        pb.REASON_UNKNOWN_SERIAL,
    }

    # truncated under the server: every page of both files gone (a mapping of them would raise SIGBUS)
    os.truncate(world.geo_path, 0)
    os.truncate(world.allowlist_path, 0)
    assert answers(process.check_addr) == loaded
    reload_and_wait(process, "reload failed")
    assert answers(process.check_addr) == loaded

    # cp over the files: the geo database as it was, the allowlist overwritten in place with same-size
    # content damaged in its payload; a reload refuses the allowlist, so the old data keeps serving
    subprocess.run(["cp", geo_copy, world.geo_path], check=True)
    damaged = bytearray(swapped.read_bytes())
    damaged[Allowlist.open(swapped).header.payload_offset] ^= 0xFF
    overwrite_in_place(world.allowlist_path, bytes(damaged))
    assert answers(process.check_addr) == loaded
    reload_and_wait(process, "reload failed")
    assert "payload checksum mismatch" in process.log()
    assert answers(process.check_addr) == loaded

    # sound same-size content written in place: not served until a reload has verified it
    overwrite_in_place(world.allowlist_path, swapped.read_bytes())
    assert answers(process.check_addr) == loaded
    reload_and_wait(process, "data loaded")
    now = answers(process.check_addr)
    swapped_id = Allowlist.open(swapped).build_id
    assert {a[3] for a in now} == {swapped_id}
    assert [a[1] for a in now[:2]] == [pb.REASON_GRAY_IMPORT, pb.REASON_AUTHORIZED]

    # `cp` of a file of another size: served after the reload, never before
    subprocess.run(["cp", bigger, world.allowlist_path], check=True)
    assert answers(process.check_addr) == now
    reload_and_wait(process, "data loaded")
    last = answers(process.check_addr)
    assert last[4][1] == pb.REASON_AUTHORIZED
    assert {a[3] for a in last} == {Allowlist.open(bigger).build_id}

    assert process.process.poll() is None
    assert "died" not in process.log()
