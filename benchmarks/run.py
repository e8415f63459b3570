"""Run every benchmark script, each as its own module in its own interpreter: `python -m benchmarks.run`.

    .venv/bin/python -m benchmarks.run [--only geo,allowlist,service]

`make bench` calls this. Each script writes its own section of benchmarks/RESULTS.md (or prints its numbers);
one that fails is reported and the others still run; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = ("geo", "allowlist", "batch_kernel", "service")
ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated scripts (default: all)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SCRIPTS))
    if unknown:
        parser.error(f"--only: unknown benchmark {', '.join(unknown)} (known: {', '.join(SCRIPTS)})")
    failed = []
    for name in names:
        if not (ROOT / "benchmarks" / f"{name}.py").exists():
            print(f"== benchmarks.{name}: not there yet, skipped", flush=True)
            continue
        print(f"== benchmarks.{name}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=ROOT)
        print(f"== benchmarks.{name}: exit code {code} after {time.monotonic() - start:.0f}s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
