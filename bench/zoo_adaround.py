"""AdaRound on the real-model corpus (issue 18: "works on the real-model corpus"), whole processes.

For each corpus model (bench/zoo_models.py; the zoo's cached models, its 32 calibration and 64
evaluation samples, bench/zoo_data.py), as a user would run it, each command its own process:

    aimetcli fold-bn MODEL -o folded.onnx
    aimetcli adaround folded.onnx -o ar.onnx --data CALIB --param-bw 4 --per-channel --iterations N
    aimetcli quantsim folded.onnx -o sim.onnx    --data CALIB --param-bw 4 --per-channel
    aimetcli quantsim ar.onnx     -o sim_ar.onnx --data CALIB --param-bw 4 --per-channel

and both sims (without onnxruntime optimizations: the simulation) are compared with FP32 on the
evaluation samples: SQNR of the first float output and the zoo's task metric
(bench/zoo_metrics.compare), with a 90% paired bootstrap interval of AdaRound's SQNR gain. Reported
per model: adaround's exit code (the error line when it fails), wall and CPU seconds, peak RSS and
the layers it rounded. W4 per-channel weights are where rounding matters (W8 loses little to
round-to-nearest); ``--iterations`` is below AIMET's default of 15,000 to keep the corpus within a
session (the sample models' rows, bench/RESULTS.md "adaround", use the default).

    .venv-zoo/bin/python bench/zoo_adaround.py [--models a,b] [--iterations 1000] [--no-write]
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
import zoo_metrics
from zoo import N_CALIB, N_EVAL, TASK_METRIC, error_line, model_and_data
from zoo_models import ZOO, ZooModel, corpus_arguments, kept_rows, selected

RUNS = ZOO / "adaround_runs"
JSON = common.DATA / "zoo_adaround.json"
WEIGHTS = ["--param-bw", "4", "--per-channel"]


@dataclass
class Row:
    model: str
    task: str
    iterations: int
    exit: int | None = None
    error: str = ""
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0
    layers: int | None = None
    moments_s: float | None = None
    rounding_s: float | None = None
    plain: dict = field(default_factory=dict)  # quantsim W4A8 per-channel: sqnr_db, task
    rounded: dict = field(default_factory=dict)  # the same after adaround
    gain: dict | None = None  # paired interval of the SQNR gain (dB)
    measured: str = ""


def _step(args: list, what: str, row: Row) -> bool:
    run = common.run_process([str(a) for a in args], check=False)
    if run.returncode != 0:
        row.error = row.error or f"{what}: {error_line(run.stderr)}"
        common.log(f"  {what}: exit {run.returncode}: {error_line(run.stderr)}")
        return False
    return True


def run_model(m: ZooModel, iterations: int) -> Row:
    path, ds, name = model_and_data(m)
    row = Row(m.name, m.task, iterations, measured=f"{time.strftime('%H:%M UTC', time.gmtime())}, {common.revision()}")
    work = RUNS / m.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    aim = common.AIMETCLI
    folded = work / "folded.onnx"
    if not _step([aim, "fold-bn", path, "-o", folded], "fold-bn", row):
        return row
    run = common.run_process([aim, "adaround", str(folded), "-o", str(work / "ar.onnx"), "--data", str(ds.calib),
                              *WEIGHTS, "--iterations", str(iterations)], check=False)
    row.exit, row.wall, row.cpu, row.peak_rss = run.returncode, run.seconds, run.cpu_seconds, run.peak_rss
    common.log(f"  adaround: exit {run.returncode}, {run.seconds:.1f} s")
    if run.returncode != 0:
        row.error = error_line(run.stderr) + (" (left an output)" if (work / "ar.onnx").exists() else "")
        return row
    done = re.search(r"AdaRounded (\d+) layers in [\d.]+ s \(moments ([\d.]+) s, rounding ([\d.]+) s\)", run.stderr)
    if done:
        row.layers, row.moments_s, row.rounding_s = int(done[1]), float(done[2]), float(done[3])
    sims = {"plain": (folded, work / "sim.onnx"), "rounded": (work / "ar.onnx", work / "sim_ar.onnx")}
    for label, (src, sim) in sims.items():
        if not _step([aim, "quantsim", src, "-o", sim, "--data", ds.calib, *WEIGHTS], f"quantsim ({label})", row):
            return row
    import numpy as np

    with np.load(ds.eval) as z:
        x = np.ascontiguousarray(z[name])
    fp32 = zoo_metrics.session(str(path), optimize=True)
    per_sample = {}
    for label, (_, sim) in sims.items():
        c = zoo_metrics.compare(fp32, zoo_metrics.session(str(sim), optimize=False), name, x, m.task)
        setattr(row, label, {"sqnr_db": c.sqnr_db, "task": c.task})
        per_sample[label] = c.per_sample
    if per_sample["plain"] and per_sample["rounded"]:
        row.gain = zoo_metrics.paired_interval(per_sample["rounded"], per_sample["plain"])
    common.log(f"  W4A8 per-channel SQNR {row.plain['sqnr_db']:.2f} -> {row.rounded['sqnr_db']:.2f} dB")
    return row


def _metric(d: dict) -> str:
    if not d:
        return "-"
    task = d.get("task")
    return f"{d['sqnr_db']:.1f} dB / " + ("-" if task is None or task != task else f"{100 * task:.0f}%")


def _gain(r: Row) -> str:
    if r.gain is None or not r.plain:
        return "-"
    interval = r.gain.get("sqnr_db")
    diff = r.rounded["sqnr_db"] - r.plain["sqnr_db"]
    return f"{diff:+.1f} dB ({interval[0]:+.1f}..{interval[1]:+.1f})" if interval else f"{diff:+.1f} dB"


def render(rows: list[Row]) -> str:
    table = []
    for r in rows:
        run = f"{r.exit} · {r.wall:.0f} s" if r.exit is not None else "not run"
        if r.error:
            run += f" · {r.error[:160]}"
        table.append([r.model, f"{r.task} ({TASK_METRIC.get(r.task, '')})", str(r.iterations), run, f"{r.cpu:.0f}",
                      common.fmt_mb(r.peak_rss) if r.peak_rss else "-", "-" if r.layers is None else str(r.layers),
                      "-" if r.moments_s is None else f"{r.moments_s:.0f} / {r.rounding_s:.0f}",
                      _metric(r.plain), _metric(r.rounded), _gain(r), r.measured])
    ok = [r for r in rows if r.exit == 0 and not r.error]
    better = [r for r in ok if r.rounded and r.rounded["sqnr_db"] > r.plain["sqnr_db"]]
    iters = sorted({r.iterations for r in rows})
    lines = [
        f"`aimetcli fold-bn`, then `aimetcli adaround --param-bw 4 --per-channel --iterations N` (N: "
        f"{' or '.join(map(str, iters))}, the iterations column) on the zoo's {N_CALIB} calibration samples, then `aimetcli quantsim --param-bw 4 "
        f"--per-channel` of the folded model with and without AdaRound (bench/zoo_adaround.py, each command its own "
        f"process). Closeness to FP32 on the {N_EVAL} evaluation samples: SQNR of the first float output / the zoo's "
        "task metric, both sims without onnxruntime optimizations. Gain: AdaRound's SQNR minus plain quantsim's, with "
        "its 90% paired bootstrap interval over the samples. adaround's own time: wall seconds of the process (exit "
        "code first), its CPU seconds, peak RSS, and the seconds of its passes over the data (moments) and of the "
        "rounding iterations.",
        "",
        common.table(["model", "task", "iterations", "adaround exit · wall", "CPU s", "peak RSS", "layers",
                      "moments / rounding s", "quantsim W4A8 pc", "+ adaround", "gain", "measured"], table,
                     "llrrrrrrrrrl"),
        "",
        f"{len(ok)} of {len(rows)} models: adaround and both sims ran; AdaRound closer to FP32 in SQNR on "
        f"{len(better)} of them.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = corpus_arguments(__doc__)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=JSON, help="the rows kept between runs (a second worker: another file, "
                    "merged by --merge)")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="rows of other --json files to take in first")
    args = ap.parse_args()
    rows = kept_rows(selected(args.models), args.json, lambda m: run_model(m, args.iterations), tuple(args.merge))
    rows = [Row(**{k: v for k, v in d.items() if k in Row.__dataclass_fields__}) for d in rows]
    body = render(rows)
    common.publish("adaround-zoo", "AdaRound on the real models (issue 18)", body, args.no_write)


if __name__ == "__main__":
    main()
