#!/usr/bin/env python3
"""AdaRound on the sample models: top-1 of quantsim without and with ``aimetcli adaround``, and
the whole-process time of the command (bench/RESULTS.md section ``adaround``).

For each sample model, W4A8 per-tensor and per-channel and W3A8 per-channel, on
sample_models/calib.npz (all its samples) and scored on sample_models/eval.npz: fold-bn ->
quantsim; fold-bn -> adaround -> quantsim; equalize -> quantsim; equalize -> adaround ->
quantsim. The adaround step runs as the CLI process (``python -m aimetcli adaround``, default
iterations unless --iterations), timed whole: wall clock and the process's CPU time (user + sys,
less sensitive to the other processes on a shared machine). ``--passes`` adds rows with that
many passes (layer chunks measured in turn).

    python bench/bench_adaround.py [--models resnet] [--iterations N] [--passes K] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from aimetcli import api  # noqa: E402
from aimetcli import model_io  # noqa: E402
from aimetcli.calibration.data import input_specs, open_data  # noqa: E402
from aimetcli.quantsim.placement import QuantOptions  # noqa: E402
from common import SAMPLE_MODELS, write_section  # noqa: E402


def top1(path: str, opts: QuantOptions) -> float:
    model, _ = api.load(path, float32=True)
    calib = open_data(str(SAMPLE_MODELS / "calib.npz"), input_specs(model))
    ev = open_data(str(SAMPLE_MODELS / "eval.npz"), input_specs(model), labels_key="label")
    sim, _, summary = api.quantsim(model, calib, opts)
    for w in summary.warnings:
        print("  warning:", w, file=sys.stderr)
    return api.evaluate([sim], ev).top1[0]


def run_adaround(src: str, dst: str, bw: int, per_channel: bool, iterations: int | None, passes: int
                 ) -> tuple[float, float, dict]:
    """(wall s, CPU s, the command's JSON)."""
    cmd = [sys.executable, "-m", "aimetcli", "adaround", src, "-o", dst, "--data", str(SAMPLE_MODELS / "calib.npz"),
           "--param-bw", str(bw), "--per-channel" if per_channel else "--per-tensor", "--json", "-q"]
    if passes:
        cmd += ["--passes", str(passes)]
    if iterations:
        cmd += ["--iterations", str(iterations)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(done.stderr)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["mobilenetv2", "resnet", "shufflenetv2"])
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--passes", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows, speed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            src = str(SAMPLE_MODELS / f"{name}_fmnist.onnx")
            model, _ = api.load(src)
            ev = open_data(str(SAMPLE_MODELS / "eval.npz"), input_specs(model), labels_key="label")
            fp32 = api.evaluate([model], ev).top1[0]
            prepared = {}
            for prep in ("fold", "equalize"):
                m, _ = api.load(src)
                api.fold_bn(m) if prep == "fold" else api.equalize(m)
                prepared[prep] = f"{tmp}/{name}_{prep}.onnx"
                model_io.save_model(m, prepared[prep])
            for bw, per_channel in ((4, False), (4, True), (3, True)):
                opts = QuantOptions(param_bw=bw, act_bw=8, per_channel=per_channel)
                gran = f"W{bw}A8 {'per-channel' if per_channel else 'per-tensor'}"
                for prep, path in prepared.items():
                    base = top1(path, opts)
                    variants = [None] + ([args.passes] if args.passes and prep == "fold" else [])
                    for passes in variants:
                        out = f"{tmp}/{name}_{prep}_ar.onnx"
                        seconds, cpu, doc = run_adaround(path, out, bw, per_channel, args.iterations, passes)
                        acc = top1(out, opts)
                        label = prep if passes is None else f"{prep}, {doc['passes']} passes"
                        rows.append(f"| {name} | {gran} | {label} | {fp32:.2f} | {base:.2f} | {acc:.2f} | "
                                    f"{acc - base:+.2f} | {seconds:.1f} | {cpu:.1f} | {doc['moments_seconds']:.1f} + "
                                    f"{doc['optimize_seconds']:.1f} |")
                        print(rows[-1], file=sys.stderr, flush=True)
                        if prep == "fold" and passes is None and bw == 4 and not per_channel:
                            for r in doc["layers"]:
                                w = 1
                                for s in r["shape"]:
                                    w *= s
                                speed.append((name, r["layer"], "x".join(map(str, r["shape"])), w,
                                              r["iterations"] / max(r["seconds"], 1e-9)))
    head = ("| model | weights | before | FP32 | quantsim | + adaround | gain | adaround wall s | CPU s | "
            "moments + rounding s |\n|---|---|---|---|---|---|---|---|---|---|\n")
    body = (f"min-max, {'default' if not args.iterations else args.iterations} iterations, all 1,000 samples of "
            "calib.npz, top-1 on the 2,000 of eval.npz; whole `aimetcli adaround` process (wall clock, and CPU "
            f"time user + sys); load average at the end {os.getloadavg()[0]:.1f} (a 2-core machine shared with "
            "other jobs: wall times vary by tens of percent).\n\n" + head + "\n".join(rows))
    body += ("\n\nIterations per second per layer (fold-bn, W4A8 per-tensor; the layer's nominal iterations over "
             "its rounding time, which stops early once no weight's rounding can change):\n\n"
             "| model | layer | weight | weights | it/s |\n|---|---|---|---|---|\n")
    body += "\n".join(f"| {a} | {c} | {sh} | {w} | {r:.0f} |" for a, c, sh, w, r in speed)
    print(body)
    if not args.no_write:
        write_section("adaround", "AdaRound (aimetcli adaround)", body)


if __name__ == "__main__":
    main()
