#!/usr/bin/env python3
"""Run every benchmark (``make bench``) and write bench/RESULTS.md.

Each script runs in its own process, one after the other (they would compete
for the two cores otherwise), and rewrites its own section of RESULTS.md; a
failing script is reported and the others still run. Set BENCH_QUICK=1 for one
repeat of everything (a check that the scripts work, not a measurement), and
AIMETCLI_SAMPLE_MODELS=DIR to take the sample models from elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ("bench_rewrites.py", "bench_quantsim.py", "bench_bias_correction.py", "bench_heavy.py")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = [s for s in SCRIPTS if not argv or any(a in s for a in argv)]
    failed = []
    start = time.perf_counter()
    for script in chosen:
        t0 = time.perf_counter()
        print(f"== {script}", file=sys.stderr, flush=True)
        code = subprocess.call([sys.executable, str(BENCH / script)], stdout=subprocess.DEVNULL)
        print(f"== {script}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        if code != 0:
            failed.append(script)
    print(f"== all done in {time.perf_counter() - start:.0f} s; results in {BENCH / 'RESULTS.md'}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
