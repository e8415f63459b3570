"""The load-test harness: short bounded runs against a real server report verified, non-zero throughput."""

from __future__ import annotations

import json
import shutil

import pytest

from regionlock.service.cli import bench as cli_bench
from regionlock.service.cli.main import OneLineParser
from regionlock.service.decision import Reason
from regionlock.service.loadtest import model as bench
from regionlock.service.loadtest.h2load import MAX_CONNECTION_RATE, run_h2load
from regionlock.service.loadtest.mixes import METHOD_UNARY, build_mix, grpc_frame, open_snapshot
from regionlock.service.loadtest.runner import run

from support.service import start_server_process, stop_server_process, write_world

pytestmark = pytest.mark.e2e  # the harness drives a `regionlock serve` process with h2load


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A one-process server on the tiny world, its metrics address, and the request mix of its data."""
    assert shutil.which("h2load"), "h2load is required (Debian: apt-get install nghttp2-client; .ci/run installs it)"
    tmp = tmp_path_factory.mktemp("bench")
    settings = write_world(tmp / "world")
    server = start_server_process(settings, tmp, "--workers", "1")
    args = list(server.process.args)
    metrics = args[args.index("--metrics-addr") + 1]
    mix = build_mix(open_snapshot(settings.geo_path, settings.allowlist_path, settings.policy_path))
    try:
        yield server, metrics, mix, settings
    finally:
        stop_server_process(server)


def test_mix_covers_every_reason_the_data_gives(served):
    _, _, mix, _ = served
    assert mix.reasons == [
        Reason.AUTHORIZED,
        Reason.REGION_RESTRICTED,
        Reason.GRAY_IMPORT,
        Reason.UNKNOWN_SERIAL,
        Reason.UNKNOWN_REGION,
    ]
    assert not mix.missing


def test_thousands_of_calls_in_flight_on_one_worker_are_all_answered(served):
    # with grpc-core's own pending-call limits (1,000 and 3,000) about 40% of these calls were refused (CANCELLED)
    server, metrics, mix, _ = served
    load = bench.Load(connections=5, streams=500, duration=60, requests=6000, warmup=0)
    result = run(server.check_addr, "unary", mix, load, metrics)
    assert result.errors == {}
    assert result.calls_ok == 6000


@pytest.mark.parametrize(
    ("mode", "requests", "checks"),
    [("unary", 500, 500), ("batch", 20, 20 * 100), ("stream", 300, 300)],
)
def test_counted_run_matches_the_servers_metrics(served, mode, requests, checks):
    server, metrics, mix, _ = served
    load = bench.Load(connections=2 if mode == "stream" else 5, streams=2, duration=30, requests=requests, warmup=0)
    result = run(server.check_addr, mode, mix, load, metrics, batch_size=100)
    assert result.errors == {}
    assert result.checks_ok == checks
    assert result.verification["server_decisions"] == result.verification["expected_decisions"] == checks
    assert result.requests_per_s > 0 and result.checks_per_s > 0
    assert set(result.latency_ms) == {"p50", "p90", "p99", "p99.9", "max"}


def test_timed_run_is_bounded_and_verified(served):
    server, metrics, mix, _ = served
    result = run(server.check_addr, "unary", mix, bench.Load(connections=5, streams=4, duration=2, warmup=0.5), metrics)
    assert result.errors == {}
    assert result.calls_ok > 0 and result.requests_per_s > 0
    assert 1.5 < result.seconds < 5
    # calls cut off in flight at the end may be counted by the server but never received by h2load
    in_flight = result.connections * result.streams
    assert 0 <= result.verification["server_decisions"] - result.calls_ok <= in_flight


def test_fixed_rate_run_offers_the_rate_over_enough_connections(served):
    server, metrics, mix, _ = served
    # 450 calls/s is more than 5 connections may send at MAX_CONNECTION_RATE: the plan opens more
    load = bench.Load(connections=5, streams=4, duration=2, rate=450, warmup=0)
    result = run(server.check_addr, "unary", mix, load, metrics)
    assert result.errors == {}
    assert result.connections >= 450 / MAX_CONNECTION_RATE
    # every connection sends the same count: the rate times the duration, rounded up to whole connections
    assert 900 <= result.calls_ok < 900 + result.connections
    assert result.verification["server_decisions"] == result.calls_ok
    assert 300 < result.requests_per_s < 600  # paced, not as fast as the server answers


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        # the server counts this refusal, so the harness can name its status
        (METHOD_UNARY, "INVALID_ARGUMENT"),
        # grpc-core answers an unknown method itself: no metric names it
        ("/regionlock.v1.DeviceCheckService/NoSuchMethod", "UNREPORTED"),
    ],
)
def test_failed_calls_that_h2load_counts_as_successes_are_errors(served, tmp_path, method, expected):
    """HTTP 200 with the status in the trailers: no response message, no decision -> errors."""
    server, metrics, _, _ = served
    corrupt = bench.Body("corrupt", method, grpc_frame(b"\x0a\xff"), items=1, response_frame_len=150)
    load = bench.Load(connections=1, streams=2, requests=40, warmup=0)
    before = bench.scrape(bench.metrics_url(metrics))
    runs = run_h2load(server.check_addr, [corrupt], load, tmp_path, duration=10, requests=40)
    assert runs[0][1]["succeeded"] == 40  # h2load alone would call this a clean run
    result = bench.Result(mode="unary", target=server.check_addr)
    bench.verify(result, runs, before, bench.scrape(bench.metrics_url(metrics)))
    assert result.calls_ok == 0
    assert result.errors == {expected: 40}


def test_missing_decisions_are_errors():
    body = bench.Body("b", METHOD_UNARY, b"", items=1, response_frame_len=100)
    stats = {"succeeded": 10, "failed": 0, "done": 10, "started": 10, "data_bytes": 1000}
    result = bench.Result(mode="unary", target="t")
    bench.verify(result, [(body, stats, None)], bench.ServerCounts(decisions=5), bench.ServerCounts(decisions=12))
    assert result.errors == {"MISSING_DECISIONS": 3}
    assert result.calls_ok == 7


def _cli(argv: list[str]) -> int:
    parser = OneLineParser(prog="regionlock")
    cli_bench.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _cli_against(served, *options: str) -> int:
    """`regionlock bench` against the served test server, with its data directory, plus options."""
    server, metrics, _, settings = served
    target = ["--target", server.check_addr, "--metrics", metrics, "--data-dir", str(settings.data_dir)]
    return _cli(["bench", *target, *options])


def test_cli_prints_json(served, capsys):
    code = _cli_against(
        served, "--mode", "batch", "--batch-size", "50", "--requests", "10", "--connections", "1", "--json"
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["checks_ok"] == 500 and out["errors"] == {}
    assert out["verification"]["server_decisions"] == 500


def test_cli_table(served, capsys):
    code = _cli_against(served, "--requests", "100", "--connections", "5")
    out = capsys.readouterr().out
    assert code == 0
    for label in ("requests/s", "checks/s", "p50", "p90", "p99", "p99.9", "errors        none"):
        assert label in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data-dir", "/nonexistent"], "--geo: no such file"),
        (["--connections", "0"], "--connections: expected a positive number"),
        (["--target", "nocolon"], "--target: expected HOST:PORT"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(["bench", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
