"""One instance per address: a second `regionlock serve` on a port in use refuses to start, in one line."""

import re
import socket
import subprocess

import grpc
import pytest

from regionlock.v1 import device_check_pb2 as pb
from regionlock.v1 import device_check_pb2_grpc as pb_grpc

from support.service import (
    IP_CRIMEA,
    free_port,
    serve_command,
    start_server_process,
    stop_server_process,
    wait_for_health,
)


def _serve(world, check_addr: str, admin_addr: str, workers: int) -> subprocess.CompletedProcess[str]:
    args = [*serve_command(world, check_addr, admin_addr, f"127.0.0.1:{free_port()}"), "--workers", str(workers)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


def _answers(address: str) -> None:
    for _ in range(5):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.DeviceCheckServiceStub(channel)
            response = stub.CheckDevice(pb.CheckDeviceRequest(serial="GLOBAL-0001", ip=IP_CRIMEA), timeout=5)
            assert response.reason == pb.REASON_REGION_RESTRICTED


@pytest.mark.parametrize("first_workers", [1, 2])
def test_a_second_instance_refuses_and_the_first_keeps_answering(world, tmp_path, first_workers):
    first = start_server_process(world, tmp_path, "--workers", str(first_workers))
    try:
        for workers in (1, 2):
            for name, check_addr, admin_addr in (
                ("check_addr", first.check_addr, f"127.0.0.1:{free_port()}"),
                ("admin_addr", f"127.0.0.1:{free_port()}", first.admin_addr),
            ):
                second = _serve(world, check_addr, admin_addr, workers)
                assert second.returncode == 2, second.stderr
                errors = _error_lines(second.stderr)
                assert len(errors) == 1, second.stderr
                held = check_addr if name == "check_addr" else admin_addr
                assert f"{name} {held}" in errors[0]
                assert f"regionlock process {first.process.pid}" in errors[0], (errors[0], first.process.pid)
        assert first.process.poll() is None
        _answers(first.check_addr)
    finally:
        assert stop_server_process(first) == 0, first.log()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("which", ["check_addr", "admin_addr"])
def test_a_port_held_by_another_program_refuses_in_one_line(world, which, workers):
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        held = f"127.0.0.1:{plain.getsockname()[1]}"
        other = f"127.0.0.1:{free_port()}"
        check_addr, admin_addr = (held, other) if which == "check_addr" else (other, held)
        result = _serve(world, check_addr, admin_addr, workers)
    assert result.returncode == 2, result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert re.search(rf"{which} {re.escape(held)}: can't listen there", errors[0]), errors[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_restart_on_the_same_addresses_after_the_first_stops(world, tmp_path, workers):
    first = start_server_process(world, tmp_path, "--workers", str(workers))
    assert stop_server_process(first) == 0, first.log()
    args = [*serve_command(world, first.check_addr, first.admin_addr, f"127.0.0.1:{free_port()}")]
    again = subprocess.Popen([*args, "--workers", str(workers)], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(first.check_addr, process=again)
        wait_for_health(first.admin_addr, process=again)
        _answers(first.check_addr)
    finally:
        again.terminate()
        assert again.wait(15) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_0_is_locked_on_the_port_chosen(world, tmp_path, workers):
    admin_addr = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "port0.log"
    args = [*serve_command(world, "127.0.0.1:0", admin_addr, f"127.0.0.1:{free_port()}"), "--workers", str(workers)]
    with open(log_path, "wb") as log:
        first = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_health(admin_addr, process=first)
        found = re.search(r"DeviceCheck on (?:port )?(?:127\.0\.0\.1:)?(\d+)", log_path.read_text())
        assert found, log_path.read_text()
        chosen = f"127.0.0.1:{found[1]}"
        wait_for_health(chosen, process=first)
        second = _serve(world, chosen, f"127.0.0.1:{free_port()}", 2)
        assert second.returncode == 2, second.stderr
        assert f"check_addr {chosen}" in second.stderr
        assert f"regionlock process {first.pid}" in second.stderr
    finally:
        first.terminate()
        assert first.wait(15) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_metrics_port_in_use_refuses_in_one_line(world, workers):
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        held = f"127.0.0.1:{plain.getsockname()[1]}"
        args = [*serve_command(world, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", held)]
        result = subprocess.run(
            [*args, "--workers", str(workers)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    assert result.returncode == 2, result.stderr
    errors = _error_lines(result.stderr)
    assert errors == [f"regionlock: error: metrics_addr {held}: can't listen there (Address already in use)"], (
        result.stderr
    )
