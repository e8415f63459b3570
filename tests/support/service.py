"""Fixtures for service tests: a tiny world built with the project's own writers, and a running server."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from regionlock.service.server.auth import create_token
from regionlock.service.server.settings import Settings

from support.allowlist import build_allowlist_from_rows
from support.geo import build_geo_from_rows

# A small world: networks with known regions, serials sold for known markets.
GEO_ROWS = [
    ("5.0.0.0/16", "DE", "DE-BE"),
    ("5.1.0.0/16", "CN", ""),
    ("5.2.0.0/16", "UA", "UA-43"),
    ("5.3.0.0/16", "UA", "UA-30"),
    ("5.4.0.0/16", "CU", ""),
    ("5.5.0.0/16", "UA", "UA-40"),
    ("2001:db8:1::/48", "DE", "DE-HH"),
]
ALLOWLIST_ROWS = [
    ("EEA-0001", "EEA"),
    ("CN-0001", "CN"),
    ("US-0001", "US"),
    ("GLOBAL-0001", "GLOBAL"),
]
IP_BERLIN = "5.0.1.1"
IP_BEIJING = "5.1.1.1"
IP_CRIMEA = "5.2.1.1"
IP_KYIV = "5.3.1.1"
IP_HAVANA = "5.4.1.1"
IP_UNKNOWN = "192.0.2.1"
TEST_POLICY = """
mode = "{mode}"
cache_ttl_seconds = 600
[[restricted]]
id = "sanctions"
regions = ["CU", "UA-43", "UA-40"]
message = "Not here."
[markets]
EEA = ["DE", "FR"]
CN = ["CN"]
GLOBAL = ["*"]
US = []  # defined, covering nowhere: a US device is a gray import everywhere
[actions]
gray_import = "{gray}"
unknown_serial = "{serial}"
unknown_region = "{region}"
"""


def policy_text(mode: str = "enforce", gray: str = "block", serial: str = "block", region: str = "block") -> str:
    return TEST_POLICY.format(mode=mode, gray=gray, serial=serial, region=region)


def _build_world_data(directory: Path) -> tuple[Path, Path]:
    """Build the small world's region database and allowlist (and their CSV sources) in `directory`."""
    return build_geo_from_rows(directory, GEO_ROWS), build_allowlist_from_rows(directory, ALLOWLIST_ROWS)


@functools.cache
def _world_data() -> Path:
    """The small world's data files, built once per test process (the region database alone is 64 MiB, about
    0.4 s to build): write_world copies them, so every world still has files of its own to replace or damage."""
    directory = Path(tempfile.mkdtemp(prefix="regionlock-world-"))
    owner = os.getpid()  # a forked child that exits through atexit must not take the build with it
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(directory, ignore_errors=True))
    _build_world_data(directory)
    return directory


def write_world(directory: Path, fresh: bool = False, **policy) -> Settings:
    """The small world's data files in `directory`: copies of the process's one build, or built there and then
    if `fresh` (for a test of the build time); return settings that point at them."""
    directory.mkdir(parents=True, exist_ok=True)
    if fresh:
        geo, allowlist = _build_world_data(directory)
    else:
        built = _world_data()
        for source in sorted(built.iterdir()):
            shutil.copyfile(source, directory / source.name)  # a new file (and mtime), never a link to the build
        geo, allowlist = directory / "geo.rlgeo", directory / "allowlist.rlallow"
    policy_path = directory / "policy.toml"
    policy_path.write_text(policy_text(**policy))
    return Settings(
        data_dir=directory,
        geo=Path(geo),
        allowlist=Path(allowlist),
        policy=policy_path,
        check_addr="127.0.0.1:0",
        admin_addr="127.0.0.1:0",
        metrics_addr="127.0.0.1:0",
        workers=1,
        grace_seconds=2.0,
    )


@pytest.fixture
def world(tmp_path) -> Settings:
    return write_world(tmp_path / "world")


@dataclass
class Running:
    """A started in-process Service and channels to both listeners."""

    service: object
    check: grpc.Channel
    admin: grpc.Channel
    operator_token: str
    viewer_token: str

    def auth(self, token: str | None = None) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token or self.operator_token}")]

    def raw_check(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        """A DeviceCheckService method called with wire bytes both ways (for malformed requests)."""
        return self.check.unary_unary(
            f"/regionlock.v1.DeviceCheckService/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )


@contextlib.contextmanager
def run_service(settings: Settings) -> Iterator[Running]:
    """The Service on `settings` (with an operator and a viewer token), started and loaded, and channels to it."""
    from regionlock.service.server.lifecycle import Service

    operator = create_token(settings.tokens_path, "alice", "operator")
    viewer = create_token(settings.tokens_path, "victor", "viewer")
    service = Service(settings)
    service.start()
    service.reload()
    check = grpc.insecure_channel(f"127.0.0.1:{service.check_port}")
    admin = grpc.insecure_channel(f"127.0.0.1:{service.admin_port}")
    try:
        yield Running(service, check, admin, operator, viewer)
    finally:
        check.close()
        admin.close()
        service.stop(0)


@pytest.fixture
def running(world) -> Iterator[Running]:
    """The Service on the small world, started and loaded, on free ports of 127.0.0.1: the test's own."""
    with run_service(world) as started:
        yield started


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """`running`, shared by a module's tests that change neither the server (its data, overrides, settings) nor
    its files and assert nothing about counts other calls move (metrics): they only ask it things."""
    with run_service(write_world(tmp_path_factory.mktemp("served") / "world")) as started:
        yield started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def regionlock_command() -> list[str]:
    """The installed console script, as a user runs it."""
    script = shutil.which("regionlock", path=os.path.dirname(sys.executable))
    assert script, "the regionlock console script is not installed beside this Python"
    return [script]


@dataclass
class ServerProcess:
    """A `regionlock serve` subprocess."""

    process: subprocess.Popen
    check_addr: str
    admin_addr: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_health(
    address: str, timeout: float = 60.0, service: str = "", process: subprocess.Popen | None = None
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not SERVING after {timeout}s")
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}")
            time.sleep(0.1)


def serve_command(settings: Settings, check_addr: str, admin_addr: str, metrics_addr: str) -> list[str]:
    """`regionlock serve` on the settings' data files and the given listeners, one process."""
    return [
        *regionlock_command(),
        "serve",
        "--data-dir",
        str(settings.data_dir),
        "--geo",
        str(settings.geo_path),
        "--allowlist",
        str(settings.allowlist_path),
        "--policy",
        str(settings.policy_path),
        "--check-addr",
        check_addr,
        "--admin-addr",
        admin_addr,
        "--metrics-addr",
        metrics_addr,
        "--workers",
        "1",
    ]


def start_server_process(settings: Settings, tmp_path: Path, *extra: str) -> ServerProcess:
    """Start `regionlock serve` on free ports with the settings' data; wait until both are SERVING."""
    check_addr, admin_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log_path = tmp_path / f"server-{check_addr.rsplit(':', 1)[1]}.log"
    args = [*serve_command(settings, check_addr, admin_addr, f"127.0.0.1:{free_port()}"), *extra]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = ServerProcess(process, check_addr, admin_addr, log_path)
    try:
        wait_for_health(check_addr, process=process)
        wait_for_health(admin_addr, process=process)
    except BaseException:
        process.kill()
        process.wait()
        raise AssertionError("server did not start:\n" + server.log()) from None
    return server


def stop_server_process(server: ServerProcess) -> int:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            return server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
    return server.process.wait()


def now_utc() -> datetime:
    return datetime.now(UTC)
