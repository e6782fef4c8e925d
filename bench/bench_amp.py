#!/usr/bin/env python3
"""Mixed precision under a budget: ``ptq --max-drop`` against plain ``ptq`` on the sample models
(bench/RESULTS.md section ``amp``).

For each sample model at W4A8 per-tensor (sample_models/calib.npz for calibration, eval.npz with
its labels for the budget and the table): ``aimetcli ptq`` without a budget and with
``--max-drop 0.5``, whole processes side by side (plain first, then with the budget, per model),
each timed once (wall clock and CPU time; the load average is in the section). From report.json:
top-1 of the exported model_qdq.onnx (onnxruntime, default optimizations), the budget's verdict,
the share of weights at 4 bits, relative bit-operations and weight bytes, and the search's own
times; the Pareto curve of the first model. ``--switch`` adds the in-process comparison of one
run of the switchable sim against building a plain sim per configuration (same grids, insert +
session + run), medians of 3.

    python bench/bench_amp.py [--models shufflenetv2,mobilenetv2,resnet] [--max-drop 0.5] [--switch] [--no-write]
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

from common import PYTHON, SAMPLE_MODELS, log, machine, table, write_section  # noqa: E402

BASE = ["--param-bw", "4", "--act-bw", "8", "--per-tensor"]


def _ptq(model: Path, out: Path, extra: list[str]) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the process, report.json's ptq section)."""
    cmd = [PYTHON, "-m", "aimetcli", "ptq", str(model), "-o", str(out), "--data", str(SAMPLE_MODELS / "calib.npz"),
           "--eval", str(SAMPLE_MODELS / "eval.npz"), "--labels", "label", *BASE, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads((out / "report.json").read_text())["ptq"]


def _row(stages: list[dict], name: str) -> dict:
    return next((s for s in stages if s["name"] == name), {})


def _switch_vs_rebuild(model_name: str) -> dict[str, float]:
    """Seconds for one configuration: a run of the switchable sim, against a plain sim built from
    the same grids (insert_qdq on a copy, an onnxruntime session, the same run), medians of 3."""
    import statistics

    from aimetcli import runtime
    from aimetcli.amp.groups import bits_of, find_groups
    from aimetcli.amp.switch import build_switchable
    from aimetcli.calibration.data import as_dataset
    from aimetcli.kernels.amp_search import default_candidates
    from aimetcli.model_ops import as_model, clone, upgrade_opset
    from aimetcli.options import QuantOptions
    from aimetcli.quantsim.insert import insert_qdq
    from aimetcli.steps.amp import _encodings
    from aimetcli.steps.rewrite import fold_bn

    model = upgrade_opset(as_model(str(SAMPLE_MODELS / f"{model_name}_fmnist.onnx"), float32=True), 21)
    fold_bn(model)
    data = as_dataset(str(SAMPLE_MODELS / "eval.npz"), model)
    opts = QuantOptions(param_bw=4, per_channel=False)
    work = clone(model)
    base, weights, acts = _encodings(work, as_dataset(str(SAMPLE_MODELS / "calib.npz"), model), opts, {4, 8},
                                     {8, 16}, 32)
    groups, _ = find_groups(work, list(base.activations), list(weights), default_candidates(4, 8))
    sw = build_switchable(work, groups, weights, acts)
    session = runtime.Session(sw.model, runtime.SIMULATE)
    batches = list(data.batches(32))
    config = [0] * len(groups)
    config[len(groups) // 2] = 1  # a mixed configuration
    wbits, abits = bits_of(groups, config)
    feeds = sw.feeds({**wbits, **abits})
    out = sw.switched.get(model.graph.outputs[0].name, model.graph.outputs[0].name)

    def switch() -> None:
        for f in batches:
            session.run({**f, **feeds}, [out])

    def rebuild() -> None:
        plain = clone(model)
        insert_qdq(plain, {t: acts[t][b] for t, b in abits.items() if b is not None and b in acts.get(t, {})},
                   {t: weights[t][b] for t, b in wbits.items() if b is not None})
        s = runtime.Session(plain, runtime.SIMULATE)
        for f in batches:
            s.run(f, [model.graph.outputs[0].name])

    times: dict[str, list[float]] = {"switch": [], "rebuild": []}
    for _ in range(3):
        for name, fn in (("switch", switch), ("rebuild", rebuild)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()} | {"samples": data.num_samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="shufflenetv2,mobilenetv2,resnet")
    ap.add_argument("--max-drop", default="0.5")
    ap.add_argument("--switch", action="store_true")
    ap.add_argument("--no-plain", action="store_true", help="only the runs with the budget (plain: '-')")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--section", default="amp", help="RESULTS.md section to write (runs of other models beside)")
    args = ap.parse_args()
    rows, curve, load = [], "", []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = SAMPLE_MODELS / f"{name}_fmnist.onnx"
            load.append(os.getloadavg()[0])
            t_plain = c_plain = float("nan")
            plain = None
            if not args.no_plain:
                log(f"{name}: plain ptq")
                t_plain, c_plain, plain = _ptq(model, Path(tmp) / f"{name}_plain", [])
            log(f"{name}: ptq --max-drop {args.max_drop}")
            t_amp, c_amp, amp = _ptq(model, Path(tmp) / f"{name}_amp", ["--max-drop", args.max_drop])
            load.append(os.getloadavg()[0])
            mp = amp["mixed_precision"]
            fp32 = _row(amp["stages"], "fp32").get("top1")
            q_plain = _row(plain["stages"], "export: model_qdq").get("top1") if plain else None
            q_amp = _row(amp["stages"], "export: model_qdq").get("top1")
            met = q_amp is not None and fp32 is not None and q_amp >= fp32 - float(args.max_drop) - 1e-9
            sec = mp["seconds"]
            rows.append([name, f"{fp32:.2f}", "-" if q_plain is None else f"{q_plain:.2f}", f"{mp['chosen_top1']:.2f}", f"{mp['final_top1']:.2f}",
                         f"{q_amp:.2f}", "met" if met else "MISSED", f"{100 * mp['lowest_weight_share']:.0f}%",
                         f"{mp['relative_bitops']:.3f} ({mp['base_relative_bitops']:.3f})",
                         f"{mp['weight_bytes'] / 1e3:.1f} ({mp['base_weight_bytes'] / 1e3:.1f})",
                         f"{sec.get('build', 0):.1f} / {sec.get('phase1', 0):.1f} / {sec.get('phase2', 0):.1f}",
                         str(mp["runs"]), f"{t_plain:.0f} / {c_plain:.0f}", f"{t_amp:.0f} / {c_amp:.0f}",
                         f"{c_amp / c_plain:.2f}x"])
            log(" | ".join(rows[-1]))
            if not curve:
                shown = [p for p in mp["pareto"] if p["meets"] is not None or p["chosen"]]
                curve = (f"Pareto curve of {name} (the points scored; {len(mp['pareto'])} steps in all):\n\n" + table(
                    ["step", "moved", "to", "bit-ops", "weights kB", "top-1", "SQNR dB", "budget"],
                    [[p["step"], p["group"] or "(start: all float)", p["candidate"] or "-", f"{p['relative_bitops']:.3f}",
                      f"{p['weight_bytes'] / 1e3:.1f}", "-" if p["top1"] is None else f"{p['top1']:.2f}",
                      "-" if p["sqnr_db"] is None else f"{p['sqnr_db']:.1f}",
                      ("met" if p["meets"] else "missed" if p["meets"] is False else "-")
                      + (" (chosen)" if p["chosen"] else "")] for p in shown]))
    body = (f"`ptq model -o out --data calib.npz --eval eval.npz --labels label --param-bw 4 --act-bw 8 "
            f"--per-tensor` without and with `--max-drop {args.max_drop}` (default candidates W4A8, W8A8, W8A16, "
            "float), whole processes, one run each, plain first then with the budget per model; load average "
            f"{min(load):.1f}-{max(load):.1f} during the runs. top-1 on the 2,000 evaluation images (one image "
            "is 0.05 points): search = the chosen point in the switchable sim; rebuilt = that configuration as "
            "a plain sim (grids recalibrated); exported = model_qdq.onnx after AdaRound and bias correction "
            "(onnxruntime, default optimizations). 4-bit share: weights' elements at 4 bits (of the FP32 weight "
            "bytes). bit-ops relative to all-8-bit (the all-W4A8 base in parentheses). Times: wall clock and "
            "the process's CPU time (user + sys), which depends less on the other processes sharing the 2 cores; "
            "the search's own phases are wall clock.\n\n")
    body += table(["model", "FP32", "plain ptq", "search", "rebuilt", "exported", "budget", "4-bit share",
                   "bit-ops (base)", "weights kB (base)", "build / phase 1 / phase 2 s", "runs",
                   "plain s wall / CPU", "budget s wall / CPU", "CPU ratio"], rows) + "\n\n" + curve
    if args.switch:
        sw = _switch_vs_rebuild(args.models.split(",")[0])
        body += (f"\n\nOne configuration scored on {sw['samples']} evaluation images, in process, medians of 3: "
                 f"the switchable sim's run {sw['switch']:.2f} s; a plain sim built from the same grids "
                 f"(insert, session, run) {sw['rebuild']:.2f} s ({sw['rebuild'] / sw['switch']:.2f}x).")
    print(body)
    if not args.no_write:
        write_section(args.section, f"Mixed precision under a budget (ptq --max-drop): {args.models}", body,
                      machine())


if __name__ == "__main__":
    main()
