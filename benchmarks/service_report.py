"""The "## Service throughput" section of benchmarks/RESULTS.md, rendered from the runs of benchmarks/service.py."""

from __future__ import annotations

import datetime
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Service throughput"


def _med(results, key):
    return statistics.median(key(x) for x in results)


def _pct(results, name):
    return _med(results, lambda x: x.latency_ms.get(name, float("nan")))


def _profile_lines(profile: dict) -> list[str]:
    if "error" in profile:
        return [f"(no profile: {profile['error']})"]
    total = profile["samples"] or 1
    lines = [
        f"py-spy at 200 Hz, only samples holding the GIL (`--gil`: the Python work, which one process runs one "
        f"thread at a time): {profile['samples']} samples of the busiest worker; share of samples with the "
        "function on top / anywhere on the stack:",
        "",
    ]
    lines += [f"- on top {100 * n / total:4.1f}%: `{f}`" for f, n in profile["self"][:8]]
    lines += [f"- anywhere {100 * n / total:4.1f}%: `{f}`" for f, n in profile["inclusive"][:8]]
    lines += [
        "",
        "The service's own code anywhere on the stack (the rest is grpcio's Python server machinery):",
        "",
    ]
    lines += [
        f"- anywhere {100 * n / total:4.1f}%: `{f}`" for f, n in sorted(profile["focus"].items(), key=lambda x: -x[1])
    ]
    return lines


COST_LABELS = {
    "floor": "HTTP/2 floor (nghttpd, 2 threads, C)",
    "aio": "echo, grpc.aio (2 workers)",
    "echo": "echo, sync grpcio (2 workers)",
    "rl": "regionlock (2 workers)",
}


def _cost_lines(r: dict) -> list[str]:
    """What each call costs each server at half the max: CPU and context switches over all its threads."""
    lines = [
        "Per call at half the max, over every thread of the server's processes (from /proc, a window of each "
        "fixed-rate run after its warm-up; medians over rounds). The load generator's own cost is not counted:",
        "",
        "| server | CPU µs per call | voluntary switches | involuntary switches |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, cost in r["costs"].items():
        lines.append(
            f"| {COST_LABELS[name]} | {cost.cpu_us:,.0f} | {cost.voluntary_switches:.1f} "
            f"| {cost.involuntary_switches:.1f} |"
        )
    return lines


def render(r: dict, args, machine: str, mix, unary: dict, batch: dict) -> str:
    e_u, r_u = _med(r["echo_unary"], lambda x: x.requests_per_s), _med(r["rl_unary"], lambda x: x.requests_per_s)
    e_b, r_b = _med(r["echo_batch"], lambda x: x.checks_per_s), _med(r["rl_batch"], lambda x: x.checks_per_s)
    ratio = statistics.median(
        x.requests_per_s / e.requests_per_s for x, e in zip(r["rl_unary"], r["echo_unary"], strict=True)
    )
    ratio_b = statistics.median(
        x.checks_per_s / e.checks_per_s for x, e in zip(r["rl_batch"], r["echo_batch"], strict=True)
    )
    half = r["rl_half"]
    p99_half = _pct(half, "p99")
    errors = sum(x.error_count for k in ("rl_unary", "rl_batch", "rl_half") for x in r[k])
    lines = [
        HEADING + " (`benchmarks/service.py`)",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine}. Server and load generator (h2load) share the "
        f"2 cores; other work on the machine adds noise, so every figure is a median over {args.rounds} rounds of "
        f"runs of {args.seconds:g} s, regionlock and the echo baseline interleaved in one run. "
        f"`regionlock serve --workers 2` serves the embedded demo data (GeoLite2-City, 1,000,000 demo serials, "
        f"the default policy); the echo "
        f"baseline (`benchmarks/echo_server.py`) is the same sync grpcio server (thread pool of 16, same options, "
        f"2 forked workers with SO_REUSEPORT) answering each request with fixed bytes of the real response's "
        f"size. Request mix: every reason the data gives ({', '.join(x.name for x in mix.reasons)}); unary runs "
        f"one h2load process per reason. Fixed-rate runs send evenly spaced calls over at least rate / 90 "
        f"connections (see the README's Load testing: h2load's own --rps sends bursts). Every run is verified "
        f"against the response sizes and the server's `regionlock_decisions_total`: {errors} errors in all "
        f"measured regionlock runs.",
        "",
        "```sh",
        "make bench                                    # everything: installs h2load if it can, all benchmarks",
        ".venv/bin/python -m benchmarks.service       # this section only (--rounds, --seconds, --soak)",
        "# one run by hand against a running server:",
        f".venv/bin/regionlock bench --target 127.0.0.1:50051 --metrics 127.0.0.1:9464 --mode unary "
        f"--connections {unary['connections']} --streams {unary['streams']} --duration 5",
        f".venv/bin/regionlock bench --target 127.0.0.1:50051 --metrics 127.0.0.1:9464 --mode batch "
        f"--batch-size 1000 --connections {batch['connections']} --streams {batch['streams']} --duration 5",
        "```",
        "",
        "Each round runs echo, regionlock, regionlock, echo; the ratio is the median over the 2 x rounds pairs "
        "(each a regionlock run over the echo run beside it), which cancels most of the drift in the machine's "
        "background load; the rates are medians over all runs.",
        "",
        "| measurement | regionlock | echo baseline | ratio | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| unary `CheckDevice`, {unary['connections']} connections x {unary['streams']} streams: req/s | {r_u:,.0f} "
        f"| {e_u:,.0f} | {ratio:.0%} | ≥ 85% of echo | {'yes' if ratio >= 0.85 else 'no'} |",
        f"| batch `CheckDevices` of 1,000 ({batch['connections']} x {batch['streams']}): decisions/s | {r_b:,.0f} "
        f"| {e_b:,.0f} | {ratio_b:.0%} | ≥ 1,000,000 | {'yes' if r_b >= 1e6 else 'no'} |",
        f"| unary p99 at half the max ({r_u / 2:,.0f} req/s offered) | {p99_half:.2f} ms "
        f"| {_pct(r['echo_half'], 'p99'):.2f} ms | | < 2 ms | {'yes' if p99_half < 2 else 'no'} |",
    ]
    if "soak" in r:
        soak, (before, after, nproc) = r["soak"], r["soak_rss"]
        growth = (after - before) / before
        lines.append(
            f"| soak {args.soak:g} s at 80% of the max ({0.8 * r_u:,.0f} req/s offered, {soak.requests_per_s:,.0f} "
            f"achieved; {soak.calls_ok:,} calls) "
            f"| {soak.error_count} errors, RSS {before / 1024:,.0f} → {after / 1024:,.0f} MiB ({growth:+.1%}, "
            f"{nproc} processes) | | | 0 errors, < 5% | {'yes' if not soak.error_count and growth < 0.05 else 'no'} |"
        )
    lines += [
        "",
        "Latency (ms, medians over runs):",
        "",
        "| run | p50 | p90 | p99 | p99.9 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, key in (
        ("echo unary, max load", "echo_unary"),
        ("regionlock unary, max load", "rl_unary"),
        ("echo batch of 1,000, max load", "echo_batch"),
        ("regionlock batch of 1,000", "rl_batch"),
        ("HTTP/2 floor (nghttpd, C), half of regionlock's max", "floor_half"),
        ("echo unary under grpc.aio, half of regionlock's max", "aio_half"),
        ("echo unary, half of regionlock's max", "echo_half"),
        ("regionlock unary, half max", "rl_half"),
    ):
        if key in r:
            lines.append(
                f"| {label} | " + " | ".join(f"{_pct(r[key], p):.2f}" for p in ("p50", "p90", "p99", "p99.9")) + " |"
            )
    lines += ["", *_cost_lines(r)]
    lines += [
        "",
        "Server models, on the echo service (unary req/s, same h2load load; pinned runs put h2load on core 1):",
        "",
        "| model | req/s |",
        "| --- | ---: |",
    ]
    for name, results in r["models"].items():
        lines.append(f"| {name} | {_med(results, lambda x: x.requests_per_s):,.0f} |")
    lines += [
        "",
        "### Profile of a worker during the batch run",
        "",
        *_profile_lines(r["profile_batch"]),
        "",
        "### Profile of a worker during the unary run",
        "",
        *_profile_lines(r["profile_unary"]),
        "",
        *_misses(r, ratio, r_b, e_b, p99_half),
    ]
    return "\n".join(lines)


def _own(profile: dict, n: int = 4) -> str:
    """The service's heaviest functions in a profile, as `name` share%, the handler's wrapper left out."""
    total = profile.get("samples") or 0
    if not total:
        return "no profile"
    rows = sorted(((f, c) for f, c in profile.get("focus", {}).items() if "edge.py" not in f), key=lambda x: -x[1])
    return ", ".join(f"`{f.split(' (')[0]}` {100 * c / total:.0f}%" for f, c in rows[:n]) or "none"


def _top(profile: dict, n: int = 3) -> str:
    total = profile.get("samples") or 0
    return (
        ", ".join(f"`{f.split(' (')[0]}` {100 * c / total:.0f}%" for f, c in profile.get("self", [])[:n])
        if total
        else ""
    )


def _handler(profile: dict) -> float:
    total = profile.get("samples") or 0
    return 100 * sum(c for f, c in profile.get("focus", {}).items() if "edge.py" in f) / total if total else 0.0


def _misses(r: dict, ratio: float, r_b: float, e_b: float, p99_half: float) -> list[str]:
    """Where a target is missed: by how much, and what the profiles of this run show."""
    pb, pu = r["profile_batch"], r["profile_unary"]
    out = ["### Where the targets are missed", ""]
    if ratio < 0.85:
        out.append(
            f"- **Unary**: {ratio:.0%} of the echo baseline, {85 - 100 * ratio:.0f} points short of 85%. The "
            f"service's handler holds {_handler(pu):.0f}% of a worker's GIL samples (heaviest: {_own(pu)}); "
            f"most GIL time is grpcio's per-call Python (on top: {_top(pu)}), which the echo pays too, so every "
            "Python call the handler adds per request costs about its own time again in lost throughput. What "
            "would close it: fewer Python calls per request on the unary path (the heaviest ones above first)."
        )
    if r_b < 1e6:
        native = any("fast" in f for f in pb.get("focus", {}))
        cause = (
            "The per-item work already runs in the Cython batch kernel (its GIL-held time is counted on the "
            "Python frame that calls it); what is left is per call: the kernel's GIL-held part and grpcio's "
            "Python per call, which the echo pays too. Next step: a native profile of the kernel "
            "(`py-spy record --native`, or callgrind) and fewer, larger calls per second."
            if native
            else "Per-item Python is the cost. What would close it: the issue's Cython batch path (wire format "
            "parsed and written in Cython, the lookups in one `nogil` loop, no Python object per item)."
        )
        out.append(
            f"- **Batch of 1,000**: {r_b:,.0f} decisions/s, {r_b / 1e6:.0%} of 1,000,000 ({1 - r_b / 1e6:.0%} "
            f"short); the transport carries {e_b:,.0f}/s of the same bytes. The handler holds {_handler(pb):.0f}% of "
            f"a worker's GIL samples (heaviest: {_own(pb)}; on top overall: {_top(pb)}). {cause}"
        )
    if p99_half >= 2:
        echo_p99 = _pct(r["echo_half"], "p99")
        costs = r["costs"]
        floor = (
            f"The machine's own floor, a C HTTP/2 server answering the same h2load load with bytes of the same "
            f"size, gives p99 {_pct(r['floor_half'], 'p99'):.2f} ms at {costs['floor'].cpu_us:,.0f} µs of CPU and "
            f"{costs['floor'].voluntary_switches + costs['floor'].involuntary_switches:.1f} context switches per "
            "call; "
            if "floor_half" in r
            else ""
        )
        echo_cost, rl_cost = costs["echo"], costs["rl"]
        verdict = (
            f"the echo baseline misses it too: the tail is the transport's on this machine. {floor}the sync "
            f"grpcio echo spends {echo_cost.cpu_us:,.0f} µs and "
            f"{echo_cost.voluntary_switches + echo_cost.involuntary_switches:.1f} context switches per call "
            f"(regionlock {rl_cost.cpu_us:,.0f} µs, "
            f"{rl_cost.voluntary_switches + rl_cost.involuntary_switches:.1f}), because grpcio's sync server "
            "hands every call between its C-core threads, a Python poller thread and a pool thread, each "
            "hand-off a wake-up that waits for the GIL and for a core. grpc.aio at the same load: p99 "
            f"{_pct(r['aio_half'], 'p99'):.1f} ms. What would close it: a gRPC server with fewer thread "
            "hand-offs per call than grpcio's Python servers, or a load generator on other cores than the "
            "server's"
            if echo_p99 >= 2
            else "the echo baseline meets it, so the tail is regionlock's own per-call work. What would close it: "
            "less Python per call (as for unary)"
        )
        out.append(
            f"- **p99 at half the max**: {p99_half:.1f} ms against < 2 ms (p50 {_pct(r['rl_half'], 'p50'):.2f} ms); "
            f"the echo baseline at the same offered load: p99 {echo_p99:.1f} ms; {verdict}."
        )
    if "soak" in r and r["soak"].error_count:
        out.append(f"- **Soak**: {r['soak'].error_count} errors: {r['soak'].errors}.")
    return out if len(out) > 2 else []


def write_section(r: dict, args, machine: str, mix, unary: dict, batch: dict, write: bool = True) -> str:
    """Render the section and put it in place of the old one in RESULTS.md (other sections untouched)."""
    text = render(r, args, machine, mix, unary, batch)
    if write:
        current = RESULTS.read_text()
        start = current.index(HEADING)
        end = current.find("\n## ", start + len(HEADING))
        tail = current[end + 1 :] if end != -1 else ""
        RESULTS.write_text(current[:start] + text.rstrip() + "\n" + ("\n" + tail if tail else ""))
    return text
