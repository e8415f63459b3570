"""`regionlock bench`, the model: loads, request bodies, results, the server's counts, verification, the report.

h2load counts a gRPC call that failed as a success (HTTP 200, the status only in the trailers), so every
run is checked twice: the DATA bytes h2load received must add up to whole responses of the size a probe
call returned (a failed call sends no message), and the server's own `regionlock_decisions_total` must have
grown by the decisions this run received. Calls that fail either check are errors, by the status code the
server's `regionlock_rpc_errors_total` names where it can, else as UNREPORTED.
"""

from __future__ import annotations

import math
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from regionlock.service.loadtest.mixes import METHOD_BATCH, METHOD_UNARY, Mix

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


class BenchError(Exception):
    """The run could not be made (no h2load, the target does not answer, ...)."""


@dataclass(frozen=True)
class Body:
    """One pre-encoded request and what a good answer to it looks like."""

    name: str
    method: str
    frame: bytes
    items: int  # decisions per call
    response_frame_len: int = 0  # filled in by probe()


@dataclass
class Load:
    """How hard and how long: connections and streams are totals over the h2load processes."""

    connections: int = 10
    streams: int = 10
    duration: float = 10.0
    requests: int | None = None
    rate: float | None = None  # requests per second over all connections
    warmup: float = 1.0
    pin: str | None = None  # CPU list for `taskset -c` (h2load only)


@dataclass
class Result:
    mode: str
    target: str
    seconds: float = 0.0
    calls_ok: int = 0
    checks_ok: int = 0
    requests_per_s: float = 0.0
    checks_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    streams: int = 0
    processes: int = 0
    offered_rate: float | None = None
    reasons: list[str] = field(default_factory=list)
    missing_reasons: list[str] = field(default_factory=list)
    verification: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the plan -------------------------------------------------------------------------------------------------


def bodies_for(mix: Mix, mode: str, batch_size: int) -> list[Body]:
    """Unary: one body (one h2load process) per reason; batch: one body mixing every reason."""
    if mode == "batch":
        return [Body("batch", METHOD_BATCH, mix.batch_body(batch_size), batch_size)]
    return [Body(reason.name, METHOD_UNARY, frame, 1) for reason, frame in mix.unary_bodies()]


def probe(target: str, bodies: list[Body], timeout: float = 10.0) -> list[Body]:
    """Call each body once (raw bytes through grpcio): the response size the run must see per call."""
    import grpc

    probed = []
    with grpc.insecure_channel(target) as channel:
        for body in bodies:
            call: Callable[..., bytes] = channel.unary_unary(body.method)
            try:
                response = call(body.frame[5:], timeout=timeout, wait_for_ready=True)
            except grpc.RpcError as exc:
                raise BenchError(f"{target}{body.method} ({body.name}): {exc.code().name}: {exc.details()}") from None
            probed.append(Body(body.name, body.method, body.frame, body.items, 5 + len(response)))
    return probed


# --- the server's own counts -----------------------------------------------------------------------------------


@dataclass
class ServerCounts:
    decisions: float = 0.0
    rpc_errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, code) -> n
    item_errors: Counter[str] = field(default_factory=Counter)  # code -> n

    def __sub__(self, other: ServerCounts) -> ServerCounts:
        return ServerCounts(
            self.decisions - other.decisions, self.rpc_errors - other.rpc_errors, self.item_errors - other.item_errors
        )


def metrics_url(value: str) -> str:
    """Accept HOST:PORT or a full URL."""
    if "://" not in value:
        value = f"http://{value}"
    if value.count("/") == 2:
        value += "/metrics"
    return value


def scrape(url: str, timeout: float = 10.0) -> ServerCounts:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError as exc:
        raise BenchError(f"can't read the server's metrics at {url}: {exc}") from None
    counts = ServerCounts()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "regionlock_decisions_total":
                counts.decisions += sample.value
            elif sample.name == "regionlock_rpc_errors_total":
                code = (sample.labels.get("method", ""), sample.labels.get("code", ""))
                counts.rpc_errors[code] += int(sample.value)  # (whole counts, in a float)
            elif sample.name == "regionlock_check_item_errors_total":
                counts.item_errors[sample.labels.get("code", "")] += int(sample.value)
    return counts


def percentiles_ms(values: list[int] | list[float], scale: float = 1e-3) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    out = {
        name: ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] * scale
        for name, q in PERCENTILES
    }
    out["max"] = ordered[-1] * scale
    return out


# --- one verified run ------------------------------------------------------------------------------------------


def verify(
    result: Result,
    runs: list[tuple[Body, dict[str, float], Path | None]],
    before: ServerCounts | None,
    after: ServerCounts | None,
) -> None:
    """Turn h2load's counts, the bytes received and the server's counters into ok calls and errors."""
    errors: Counter[str] = Counter()
    ok_calls = 0
    in_flight = 0
    items = runs[0][0].items
    uneven = []
    for body, stats, _ in runs:
        errors.update({k: int(stats.get(k, 0)) for k in ("3xx", "4xx", "5xx") if stats.get(k)})
        http_errors = sum(int(stats.get(k, 0)) for k in ("3xx", "4xx", "5xx"))
        if stats["failed"] > http_errors:
            errors["STREAM_ERROR"] += int(stats["failed"] - http_errors)
        whole, rest = divmod(int(stats["data_bytes"]), body.response_frame_len)
        if rest:
            uneven.append(body.name)
        ok_calls += min(whole, int(stats["succeeded"]))
        errors["UNREPORTED"] += max(0, int(stats["succeeded"]) - whole)
        in_flight += int(stats.get("started", 0) - stats["done"])
    result.verification["response_bytes"] = "whole responses" if not uneven else f"uneven for {', '.join(uneven)}"
    if before is not None and after is not None:
        delta = after - before
        decisions = round(delta.decisions)
        expected = ok_calls * items
        result.verification.update(server_decisions=decisions, expected_decisions=expected)
        methods = {body.method.rsplit("/", 1)[1] for body, _, _ in runs}
        server_codes = {code: int(n) for (method, code), n in delta.rpc_errors.items() if method in methods and n}
        # calls without a response message: name them by the server's own error codes where it has them
        for code, n in sorted(server_codes.items()):
            take = min(n, errors["UNREPORTED"])
            errors["UNREPORTED"] -= take
            errors[code] += take
        for code, n in delta.item_errors.items():
            if n:
                errors[f"ITEM_{code}"] += int(n)
        if decisions < expected:
            missing = math.ceil((expected - decisions) / items)
            errors["MISSING_DECISIONS"] += missing
            ok_calls -= missing
        elif decisions > expected + in_flight * items:
            result.notes.append(
                f"the server counted {decisions - expected} more decisions than this run received: other clients?"
            )
    else:
        result.notes.append("no --metrics: verified by response bytes only")
    if errors["UNREPORTED"] and before is not None:
        result.notes.append(
            "UNREPORTED calls got no answer and the service did not count them: refused before it saw them, as "
            "grpc-core refuses calls (CANCELLED) beyond a worker's max_pending_calls"
        )
    result.errors = {k: v for k, v in sorted(errors.items()) if v}
    result.calls_ok = ok_calls
    result.checks_ok = ok_calls * items - sum(v for k, v in result.errors.items() if k.startswith("ITEM_"))


# --- output ----------------------------------------------------------------------------------------------------


def format_table(result: Result) -> str:
    what = {"unary": "CheckDevice", "batch": "CheckDevices", "stream": "StreamCheckDevices"}[result.mode]
    lines = [
        f"regionlock bench: {result.mode} {what} against {result.target}",
        f"  load          {result.connections} connections x {result.streams} streams, {result.processes} "
        f"client processes, {result.seconds:.2f} s"
        + (f", offered {result.offered_rate:,.0f} req/s" if result.offered_rate else ""),
        f"  requests/s    {result.requests_per_s:,.0f}",
        f"  checks/s      {result.checks_per_s:,.0f}",
        "  latency ms    " + "  ".join(f"{k} {v:.3f}" for k, v in result.latency_ms.items()),
        f"  calls         {result.calls_ok:,} ok, {result.error_count:,} errors ({result.checks_ok:,} checks)",
        "  errors        " + (", ".join(f"{k}: {v:,}" for k, v in result.errors.items()) or "none"),
        "  verified      "
        + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in result.verification.items()),
        "  reasons       "
        + ", ".join(result.reasons)
        + (f" (missing from the data: {', '.join(result.missing_reasons)})" if result.missing_reasons else ""),
    ]
    lines += [f"  note          {note}" for note in result.notes]
    return "\n".join(lines)
