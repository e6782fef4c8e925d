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

``--speed`` instead writes the section ``adaround-timing``: each sample model's whole `aimetcli
adaround` process at W4A8 per-channel (median of 3, the models interleaved, the load beside
each), and with ``--full`` the full-size MobileNetV2 (bench/make_mobilenetv2.py, BN folded) on
random:256 (224x224): the adaround process against 120x one FP32 onnxruntime pass over the same
samples (the pass timed inside its process, and the whole process), and the peak RSS of both
processes; iterations per second per layer size from the commands' JSON.

    python bench/bench_adaround.py --speed [--baseline /path/to/other/checkout] [--full] [--full-iterations N] [--no-write]

``--baseline`` runs that checkout's aimetcli (PYTHONPATH) beside this tree's, run after run, and
gives the ratios of the medians and whether the outputs are the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
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
from common import SAMPLE_MODELS, ensure_mobilenetv2, require_import_from, run_process, write_section  # noqa: E402


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


# one FP32 onnxruntime pass over the data, in batches of 32, as its own process: prints the pass's seconds
_FP32_PASS = """
import sys, time
from aimetcli import api, runtime
from aimetcli.calibration.data import input_specs, open_data
model, _ = api.load(sys.argv[1])
data = open_data(sys.argv[2], input_specs(model))
session = runtime.Session(model, runtime.MEASURE)
t = time.perf_counter()
for feeds in data.batches(32):
    session.run(feeds)
print(time.perf_counter() - t, file=sys.stderr)
"""


def _cli(*args: str, iterations: int | None = None) -> list[str]:
    return [sys.executable, "-m", "aimetcli", "adaround", *args, "--json", "-q",
            *(["--iterations", str(iterations)] if iterations else [])]


def _speed_rows(name: str, doc: dict) -> list[str]:
    rows = []
    for r in doc["layers"]:
        weights = 1
        for n in r["shape"]:
            weights *= n
        rate = r["iterations"] / max(r["seconds"], 1e-9)
        rows.append(f"| {name} | {r['layer']} | {'x'.join(map(str, r['shape']))} | {weights} | {rate:.0f} |")
    return rows


def _timed(cmd: list[str], report: str, pythonpath: str) -> tuple[float, float, int, float, dict]:
    """One whole `aimetcli adaround` process run from ``pythonpath``'s aimetcli: (wall s, CPU s
    (user + sys), peak RSS bytes, load average at its start, its JSON). It runs in the report's
    directory: `python -m` puts the working directory first on sys.path, so from a checkout's
    root every side would import that checkout's aimetcli whatever PYTHONPATH says."""
    os.environ["PYTHONPATH"] = pythonpath
    where = os.path.dirname(os.path.abspath(report))
    require_import_from(pythonpath, where)
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = run_process(["sh", "-c", " ".join(shlex.quote(c) for c in cmd) + " > " + shlex.quote(report)], cwd=where)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(report) as f:
        doc = json.load(f)
    return done.seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, done.peak_rss, load, doc


def timing_section(args) -> str:
    """Each sample model's whole process, 3 runs interleaved (model after model; with ``--baseline``
    DIR, that checkout's run beside each: A, B, A, B, ...), medians of wall and CPU time."""
    versions = {"this tree": str(ROOT)}
    if args.baseline:
        versions = {f"baseline ({_revision(args.baseline)})": str(Path(args.baseline).resolve()),
                    f"this tree ({_revision(str(ROOT))})": str(ROOT)}
    runs: dict[tuple[str, str], list[tuple[float, float, int, float]]] = {}
    docs: dict[str, dict] = {}
    outputs: dict[tuple[str, str], bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(3):
            for name in args.models:
                for version, path in versions.items():
                    out = f"{tmp}/{name}.onnx"
                    cmd = _cli(str(SAMPLE_MODELS / f"{name}_fmnist.onnx"), "-o", out, "--data",
                               str(SAMPLE_MODELS / "calib.npz"), "--param-bw", "4", "--per-channel",
                               iterations=args.iterations)
                    wall, cpu, rss, load, doc = _timed(cmd, f"{tmp}/{name}.json", path)
                    runs.setdefault((name, version), []).append((wall, cpu, rss, load))
                    outputs[(name, version)] = Path(out).read_bytes()
                    docs[name] = doc  # the last version's per-layer rates
                    print(name, version, f"{wall:.1f} s wall, {cpu:.1f} s CPU, {rss / 2**20:.0f} MB, load {load:.1f}",
                          file=sys.stderr, flush=True)
        os.environ["PYTHONPATH"] = str(ROOT)
        body = ("`aimetcli adaround MODEL --data sample_models/calib.npz --param-bw 4 --per-channel` (1,000 samples, "
                f"{args.iterations or 'the default 15,000'} iterations a layer), whole process, 3 runs a model "
                "interleaved (and with the baseline's run beside each); the goal is 15 s wall with the default. "
                "CPU time (user + sys) is the figure comparable across loads.\n\n"
                "| model | version | wall s (median) | runs | CPU s (median) | peak RSS MB | load at the starts |\n"
                "|---|---|---|---|---|---|---|\n")
        for (name, version), r in runs.items():
            walls, cpus = sorted(x[0] for x in r), sorted(x[1] for x in r)
            body += (f"| {name} | {version} | {walls[1]:.1f} | {' / '.join(f'{x[0]:.1f}' for x in r)} | {cpus[1]:.1f} | "
                     f"{max(x[2] for x in r) / 2**20:.0f} | {' / '.join(f'{x[3]:.1f}' for x in r)} |\n")
        if len(versions) == 2:
            base, this = versions
            body += "\n"
            for name in args.models:
                med = {v: (sorted(x[0] for x in runs[(name, v)])[1], sorted(x[1] for x in runs[(name, v)])[1])
                       for v in versions}
                same = "same output bytes" if outputs[(name, base)] == outputs[(name, this)] else "output bytes differ"
                body += (f"- {name}: this tree / baseline = {med[this][0] / med[base][0]:.2f} wall, "
                         f"{med[this][1] / med[base][1]:.2f} CPU; {same}.\n")
        if args.full:
            body += "\n" + _full_size(tmp, args.full_iterations, docs)
    body += ("\nIterations per second per layer (this tree's last run; the layer's nominal iterations over its rounding "
             "time, which stops early once no weight's rounding can change):\n\n| model | layer | weight | weights | it/s |\n"
             "|---|---|---|---|---|\n")
    body += "\n".join(row for name, doc in docs.items() for row in _speed_rows(name, doc))
    return body


def _revision(path: str) -> str:
    done = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no", "--", "aimetcli"], capture_output=True,
                           text=True).stdout.strip()
    return (done.stdout.strip() or "?") + (" + changes" if dirty else "")


def _full_size(tmp: str, iterations: int | None, docs: dict) -> str:
    src = str(ensure_mobilenetv2())
    folded = f"{tmp}/mnv2_folded.onnx"
    subprocess.run([sys.executable, "-m", "aimetcli", "fold-bn", src, "-o", folded, "-q"], check=True)
    data = "random:256"
    passes = []
    for _ in range(3):
        load = os.getloadavg()[0]
        done = run_process([sys.executable, "-c", _FP32_PASS, folded, data])
        passes.append((float(done.stderr.strip().splitlines()[-1]), done.seconds, done.peak_rss, load))
    passes.sort()
    fp32_run, fp32_proc, fp32_rss, fp32_load = passes[1]
    cmd = _cli(folded, "-o", f"{tmp}/mnv2_ar.onnx", "--data", data, "--param-bw", "4", "--per-channel",
               iterations=iterations)
    load = os.getloadavg()[0]
    report = f"{tmp}/mnv2_ar.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = run_process(["sh", "-c", " ".join(shlex.quote(c) for c in cmd) + " > " + shlex.quote(report)])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    with open(report) as f:
        docs["mobilenetv2 (full size)"] = json.load(f)
    return (f"Full-size MobileNetV2 (52 Conv + Gemm, BN folded), random:256 at 224x224, W4A8 per-channel, "
            f"{iterations or 'default (15,000)'} iterations: one FP32 onnxruntime pass over the samples {fp32_run:.1f} s "
            f"(its whole process {fp32_proc:.1f} s, peak RSS {fp32_rss / 2**20:.0f} MB; median of 3, load "
            f"{fp32_load:.1f}); `aimetcli adaround` {done.seconds:.0f} s wall = {done.seconds / fp32_run:.0f}x the pass "
            f"(goal 120x; {cpu:.0f} s of CPU), peak RSS {done.peak_rss / 2**20:.0f} MB = {done.peak_rss / fp32_rss:.2f}x the FP32 process "
            f"(goal 2x); load {load:.1f} at its start.\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["mobilenetv2", "resnet", "shufflenetv2"])
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--passes", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--speed", action="store_true", help="the timing section instead (see the module docstring)")
    ap.add_argument("--full", action="store_true", help="with --speed: the full-size MobileNetV2 too")
    ap.add_argument("--full-iterations", type=int, default=None)
    ap.add_argument("--baseline", default=None, help="with --speed: another checkout (its root) timed beside this one")
    args = ap.parse_args()
    if args.speed:
        body = timing_section(args)
        print(body)
        if not args.no_write:
            write_section("adaround-timing", "AdaRound whole-process time and memory (bench_adaround.py --speed)", body)
        return
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
