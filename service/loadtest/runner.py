"""`regionlock bench`: load a running server with h2load (unary, batch) or Python streams, and verify it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from regionlock.service.loadtest.h2load import MAX_CONNECTION_RATE, connection_plan, latencies_us, run_h2load
from regionlock.service.loadtest.mixes import Mix
from regionlock.service.loadtest.model import (
    Body,
    Load,
    Result,
    bodies_for,
    metrics_url,
    percentiles_ms,
    probe,
    scrape,
    verify,
)
from regionlock.service.loadtest.stream import run_stream


def run_h2load_mode(target: str, mode: str, bodies: list[Body], load: Load, metrics: str | None) -> Result:
    """Probe, warm up, scrape, load, scrape, verify; with latency percentiles from h2load's logs."""
    bodies = probe(target, bodies)
    connections, _ = connection_plan(load, len(bodies))
    result = Result(
        mode=mode,
        target=target,
        connections=connections,
        streams=load.streams,
        processes=len(bodies),
        offered_rate=load.rate,
    )
    if load.connections < connections:
        result.notes.append(
            f"connections raised to {connections}: one h2load process per request body, and at a fixed rate at "
            f"most {MAX_CONNECTION_RATE:.0f} calls/s per connection"
        )
    with tempfile.TemporaryDirectory(prefix="regionlock-bench-") as tmp:
        workdir = Path(tmp)
        if load.warmup > 0 and load.requests is None:
            run_h2load(target, bodies, load, workdir, load.warmup, None, keep_logs=False)
        url = metrics_url(metrics) if metrics else None
        before = scrape(url) if url else None
        runs = run_h2load(target, bodies, load, workdir, load.duration, load.requests)
        if url:
            time.sleep(0.2)  # calls cancelled at the cutoff finish in the server
        after = scrape(url) if url else None
        result.seconds = max(stats["seconds"] for _, stats, _ in runs)
        verify(result, runs, before, after)
        result.latency_ms = percentiles_ms(latencies_us([p for _, _, p in runs if p is not None]))
    if result.seconds > 0:
        result.requests_per_s = result.calls_ok / result.seconds
        result.checks_per_s = result.checks_ok / result.seconds
    return result


def run(target: str, mode: str, mix: Mix, load: Load, metrics: str | None, batch_size: int = 1000) -> Result:
    """One bounded, verified run of any mode against a running server."""
    if mode == "stream":
        result = run_stream(target, mix, load, metrics)
    else:
        result = run_h2load_mode(target, mode, bodies_for(mix, mode, batch_size), load, metrics)
    result.reasons = [r.name for r in mix.reasons]
    result.missing_reasons = [r.name for r in mix.missing]
    return result
