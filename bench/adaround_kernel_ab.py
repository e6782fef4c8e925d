"""AdaRound's iteration kernel alone (kernels/adaround.optimize), this tree against another checkout.

Thirteen layer problems shaped like the MobileNetV2 sample's (1x1 and depthwise 3x3 convs, the
classifier; per-channel grids of 4 bits, random moments over 2,000 positions, seeded), each
optimised alone for 15,000 iterations as ``aimetcli adaround`` does. A whole adaround process on
the sample spends about half its time here; this measures the kernel without the onnxruntime
passes, whose time moves more with the machine's other jobs. Each round runs one process of each
tree, alternately; reported: each process's CPU seconds of the optimisation, the medians and
their ratio, and a checksum of the roundings (the same when the arithmetic is).

    python bench/adaround_kernel_ab.py --baseline /path/to/other/checkout [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import time, numpy as np
from aimetcli.kernels import adaround as ar
rng = np.random.default_rng(0)
shapes = [(1,16,9),(48,1,9),(1,48,16),(1,24,48),(96,1,9),(1,96,24),(1,32,96),(128,1,9),(1,128,32),(1,64,128),
          (256,1,9),(1,256,64),(1,10,256)]
probs = []
for g, m, d in shapes:
    n = 2000
    x = rng.standard_normal((g, n, d)); f = x + 0.05 * rng.standard_normal(x.shape)
    w = rng.standard_normal((g, m, d)) * 0.3
    scale = np.abs(w).max(axis=2, keepdims=True) / 7
    probs.append(ar.LayerProblem(w, scale, np.full(scale.shape, -8.0), np.full(scale.shape, 7.0),
                                 x.transpose(0, 2, 1) @ x, x.transpose(0, 2, 1) @ f, 1.0, n))
t = time.process_time()
out = [ar.optimize([p], iterations=15000) for p in probs]
print(f"{time.process_time() - t:.3f}", sum(int(r[0].k.sum()) for r in out))
"""


def _run(root: str | None) -> tuple[float, int]:
    env = dict(os.environ)
    if root is not None:
        env["PYTHONPATH"] = root
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True,
                         cwd="/")
    seconds, checksum = out.stdout.split()
    return float(seconds), int(checksum)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the other checkout's root")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    times: dict[str, list[float]] = {"baseline": [], "this tree": []}
    sums = set()
    for i in range(args.rounds):
        for name, root in (("baseline", os.path.abspath(args.baseline)), ("this tree", here))[::1 if i % 2 else -1]:
            seconds, checksum = _run(root)
            times[name].append(seconds)
            sums.add((name, checksum))
            print(f"round {i + 1} {name}: {seconds:.2f} s CPU, checksum {checksum}", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"baseline {med['baseline']:.2f} s, this tree {med['this tree']:.2f} s CPU (medians of {args.rounds}); "
          f"ratio {med['this tree'] / med['baseline']:.2f}; load {os.getloadavg()[0]:.1f}; "
          f"checksums {sorted(sums)}")


if __name__ == "__main__":
    main()
