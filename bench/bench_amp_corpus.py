#!/usr/bin/env python3
"""16-bit activations only where needed, on the real-model corpus (issue 19; bench/RESULTS.md
section ``amp-corpus``).

For each corpus model (bench/zoo_models.py; its file in bench/data/zoo/models, its calibration
and evaluation inputs from zoo_data.ensure, as bench/zoo.py makes them):

1. plain ``aimetcli quantsim`` at W8A8 and at W8A16 (``--act-bw 16``), with per-tensor weights
   (quantsim's default) and per-channel weights, each scored on the evaluation data: output SQNR
   against FP32 (onnxruntime without optimizations: the simulation) of the logits where the
   output is a Softmax's (what ptq's judge scores), else of the first float output;
2. the model "loses more than 3 dB at W8A8" when the best W8A16 sim's SQNR minus the best W8A8
   sim's is over ``--gap`` dB (3). The budget is then 1 dB below that best all-16-bit-activation
   sim: ``aimetcli ptq --eval ... --min-sqnr (SQNR_A16 - 1) --amp-candidates w8a8,w8a16 --amp-cost
   activations`` (``--cost``) with that sim's weight granularity (8-bit weights everywhere; the
   search sets each activation at 8 or 16 bits);
3. from report.json: the search's pick, the share of activation quantizers at 16 bits (the
   issue's goal: at most 25%), the search's phases; the deployable model_qdq.onnx scored on the
   evaluation data (onnxruntime with its default optimizations); met = that SQNR >= the budget.

Every process is timed once (wall clock and its CPU time, user + sys). Rows are kept in
bench/data/amp_corpus.json, so ``--models`` reruns some and the section shows all, each with
the time and revision it was measured at. ``--keep DIR`` keeps each ptq output (pareto.png).

    python bench/bench_amp_corpus.py [--models a,b] [--granularity per-channel,per-tensor] [--no-write] [--render]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
import zoo_data
import zoo_metrics
from zoo import N_CALIB, N_EVAL
from zoo_models import CORPUS, EXPORTED, MODELS, ZooModel

RESULTS_JSON = common.DATA / "amp_corpus.json"
CANDIDATES = "w8a8,w8a16"


def _aimetcli(args: list[str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the process, exit code, last stderr line) of ``python -m aimetcli args``
    run from the checkout (its aimetcli, not the venv's)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([common.PYTHON, "-m", "aimetcli", *args], cwd=common.ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    err = next((ln for ln in lines if ln.startswith("Error")), lines[-1] if lines else "")
    return wall, cpu, r.returncode, err


def _parts_judge(model: Path, data: Path):
    """ptq's judge (aimetcli.ptq_judge.Judge) of ``model`` on ``data`` where it scores a detector
    head in parts (a Concat of boxes and scores), else None: the budget is then set and checked on
    the judge's own SQNR (each part's error relative to that part), not on the whole output's,
    which the boxes in pixels decide alone."""
    from aimetcli import api, ptq_judge
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.model_io import load_model

    fp32, _ = api.prepare(load_model(str(model)).model)
    judge = ptq_judge.Judge(fp32, open_data(str(data), input_specs(fp32)), 16)
    return judge if len(judge.scored() or []) > 1 else None


def _sqnr(fp32, path: Path, name: str, x: np.ndarray, task: str, optimize: bool, parts=None,
          advised: bool = False) -> float:
    """SQNR of ``path`` against ``fp32`` over ``x``: as ``parts`` scores it (:func:`_parts_judge`);
    of the logits when ``fp32`` is the session of a Softmax's input (zoo_metrics.logits_session),
    as ptq's judge scores them; else of the first float output. ``advised``: with the session
    option export names (what ptq's judge runs)."""
    if parts is not None:
        from aimetcli.model_io import load_model

        level = ("advised" if advised else "all") if optimize else "none"
        return parts.score(load_model(str(path)).model, optimization=level).sqnr_db
    if len(fp32.get_outputs()) == 1 and (q := zoo_metrics.logits_session(str(path), optimize, advised)) is not None:
        return zoo_metrics.logits_sqnr(fp32, q, name, x)
    return zoo_metrics.compare(fp32, zoo_metrics.session(str(path), optimize, advised), name, x, task).sqnr_db


def measure(m: ZooModel, granularities: list[str], gap: float, work: Path, cost: str = "activations") -> dict:
    path = MODELS / f"{m.name}.onnx"
    fp32 = zoo_metrics.logits_session(str(path), optimize=True) or zoo_metrics.session(str(path), optimize=True)
    name = fp32.get_inputs()[0].name
    ds = zoo_data.ensure(m, name, N_CALIB, N_EVAL)
    with np.load(ds.eval) as z:
        x = np.ascontiguousarray(z[name])
    parts = _parts_judge(path, ds.eval)
    row: dict = {"name": m.name, "task": m.task, "sims": {},
                 "measured": f"{time.strftime('%H:%M UTC', time.gmtime())}, {common.revision()}",
                 "load": [round(os.getloadavg()[0], 1)]}
    for gran in granularities:
        for act in (8, 16):
            sim = work / f"sim_{gran}_a{act}.onnx"
            wall, cpu, code, err = _aimetcli(["quantsim", str(path), "-o", str(sim), "--data", str(ds.calib),
                                              "--act-bw", str(act), f"--{gran}"])
            key = f"W8A{act} {gran}"
            row["sims"][key] = {"sqnr_db": _sqnr(fp32, sim, name, x, m.task, False, parts) if code == 0 else None,
                                "seconds": wall, "cpu": cpu, "error": err if code else ""}
            common.log(f"  {key}: {row['sims'][key]}")
    best = {a: max(((k, v["sqnr_db"]) for k, v in row["sims"].items() if k.startswith(f"W8A{a} ")
                    and v["sqnr_db"] is not None), key=lambda kv: kv[1], default=(None, None)) for a in (8, 16)}
    if best[8][1] is None or best[16][1] is None:
        return row
    row["best_a8"], row["best_a16"] = best[8], best[16]
    row["gap_db"] = best[16][1] - best[8][1]
    if row["gap_db"] <= gap:
        return row
    target = round(best[16][1] - 1.0, 2)
    gran = best[16][0].split()[1]
    out = work / "ptq"
    args = ["ptq", str(path), "-o", str(out), "--data", str(ds.calib), "--eval", str(ds.eval), f"--{gran}",
            "--min-sqnr", f"{target}", "--amp-candidates", CANDIDATES, "--amp-cost", cost]
    common.log(f"  aimetcli {' '.join(args)}")
    wall, cpu, code, err = _aimetcli(args)
    row["load"].append(round(os.getloadavg()[0], 1))
    row["ptq"] = {"target": target, "granularity": gran, "seconds": wall, "cpu": cpu, "exit": code, "error": err,
                  "cost": cost}
    if code != 0:
        return row
    report = json.loads((out / "report.json").read_text())["ptq"]
    mp = report["mixed_precision"]
    acts = [g for g in mp["groups"] if g["activation"]]
    row["ptq"].update({
        "deploy_sqnr_db": _sqnr(fp32, out / "model_qdq.onnx", name, x, m.task, True, parts, advised=True),
        "deploy_default_sqnr_db": _sqnr(fp32, out / "model_qdq.onnx", name, x, m.task, True, parts),
        "search_sqnr_db": mp["chosen_sqnr_db"], "rebuilt_sqnr_db": mp["final_sqnr_db"],
        "a16": sum(1 for g in acts if g["act_bw"] == 16), "activations": len(acts),
        "share": mp["wide_activation_share"], "seconds_search": mp["seconds"], "runs": mp["runs"],
        "relative_bitops": mp["relative_bitops"], "steps": len(mp["pareto"]),
        "pareto": [p for p in mp["pareto"] if p["sqnr_db"] is not None or p["chosen"]],
    })
    return row


def _db(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _deployed(p: dict) -> str:
    """The advised session's SQNR, and the default session's where it differs."""
    default = p.get("deploy_default_sqnr_db")
    if default is None or abs(default - p["deploy_sqnr_db"]) < 0.05:
        return _db(p["deploy_sqnr_db"])
    return f"{_db(p['deploy_sqnr_db'])} ({_db(default)} default)"


def render(rows: list[dict], gap: float) -> str:
    head = ["model", "task", "W8A8 pt / pc", "W8A16 pt / pc", "gap", "budget (gran.)", "search",
            "rebuilt", "deployed", "met", "A16 share", "bit-ops", "build / phase 1 / phase 2 s",
            "ptq s wall / CPU", "load", "measured"]
    out = []
    for r in rows:
        s = r["sims"]
        cells = [r["name"], r["task"],
                 f"{_db(s.get('W8A8 per-tensor', {}).get('sqnr_db'))} / {_db(s.get('W8A8 per-channel', {}).get('sqnr_db'))}",
                 f"{_db(s.get('W8A16 per-tensor', {}).get('sqnr_db'))} / {_db(s.get('W8A16 per-channel', {}).get('sqnr_db'))}",
                 _db(r.get("gap_db"))]
        p = r.get("ptq")
        if p is None:
            cells += ["not needed" if r.get("gap_db") is not None else "-"] + ["-"] * 9
        elif p["exit"] != 0:
            cells += [f"{p['target']:.2f} ({p['granularity']})", f"exit {p['exit']}: {p['error'][:120]}"] + ["-"] * 6 + [
                f"{p['seconds']:.0f} / {p['cpu']:.0f}"]
        else:
            met = p["deploy_sqnr_db"] >= p["target"]
            sec = p["seconds_search"]
            cells += [f"{p['target']:.2f} ({p['granularity']}, {p.get('cost', 'bitops')})", _db(p["search_sqnr_db"]), _db(p["rebuilt_sqnr_db"]),
                      _deployed(p), "met" if met else "MISSED",
                      f"{100 * p['share']:.0f}% ({p['a16']} of {p['activations']})", f"{p['relative_bitops']:.3f}",
                      f"{sec.get('build', 0):.0f} / {sec.get('phase1', 0):.0f} / {sec.get('phase2', 0):.0f}",
                      f"{p['seconds']:.0f} / {p['cpu']:.0f}"]
        cells += ["-".join(str(v) for v in r["load"]), r["measured"]]
        out.append(cells)
    text = (f"Issue 19 on the real models: plain `aimetcli quantsim` at W8A8 and W8A16 (`--act-bw 16`), per-tensor "
            f"(pt, quantsim's default) and per-channel (pc) weights, output SQNR (dB) against FP32 (of the logits "
            f"where the output is a Softmax's, as ptq's judge scores them) on the {N_EVAL} evaluation samples (onnxruntime without optimizations), calibrated on {N_CALIB} others "
            "(bench/zoo_data.py). gap = best W8A16 less best W8A8; where it is over "
            f"{gap:g} dB, `ptq --min-sqnr (best W8A16 - 1) --amp-candidates {CANDIDATES}` with the best W8A16 sim's "
            "weight granularity (--per-channel / --per-tensor; 8-bit weights, each activation at 8 or 16 bits). "
            "search / rebuilt: the chosen point in the switchable sim and rebuilt as a plain sim, scored where "
            "the budget is measured (ptq's judge, on the evaluation samples); deployed: ptq's model_qdq.onnx (after its other stages) on the "
            "evaluation samples, with onnxruntime's default optimizations and the session option export names where it applies "
            "(MatMulNBits' accuracy level: docs/design.md), scored as the sims are; in brackets the default session's where it differs; met: deployed >= budget. A16 share: activation quantizers at 16 bits of those the "
            "search sets (the issue asks at most 25%). bit-ops relative to all-W8A8. Each process timed once; "
            "load average before and after the model's runs.\n\n")
    text += common.table(head, out)
    return text


def pareto_table(row: dict) -> str:
    p = row["ptq"]
    return (f"\n\nPareto curve of {row['name']} (the points scored; {p['steps']} steps in all; budget "
            f"{p['target']:.2f} dB on the evaluation samples):\n\n" + common.table(
                ["step", "moved", "to", "bit-ops", "SQNR dB", "budget"],
                [[q["step"], q["group"] or "(start: all W8A16)", q["candidate"] or "-", f"{q['relative_bitops']:.3f}",
                  _db(q["sqnr_db"]), ("met" if q["meets"] else "missed" if q["meets"] is False else "-")
                  + (" (chosen)" if q["chosen"] else "")] for q in p["pareto"]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated (default: every corpus model whose file is in "
                    "bench/data/zoo/models)")
    ap.add_argument("--granularity", default="per-tensor,per-channel")
    ap.add_argument("--gap", type=float, default=3.0)
    ap.add_argument("--cost", choices=("activations", "bitops"), default="activations",
                    help="ptq's --amp-cost [activations: the issue counts activations at 16 bits]")
    ap.add_argument("--keep", type=Path, help="keep each model's sims and ptq output under DIR/<model>")
    ap.add_argument("--json", type=Path, default=RESULTS_JSON, help="where rows are kept [bench/data/amp_corpus.json]")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", action="store_true", help="measure nothing: write the section from the json")
    args = ap.parse_args()
    everything = CORPUS + EXPORTED
    wanted = [] if args.render else args.models.split(",") if args.models else [m.name for m in everything
                                                          if (MODELS / f"{m.name}.onnx").exists()]
    unknown = set(wanted) - {m.name for m in everything}
    if unknown:
        sys.exit(f"unknown model: {sorted(unknown)}")
    for m in (m for m in everything if m.name in wanted):
        if not (MODELS / f"{m.name}.onnx").exists():
            common.log(f"{m.name}: skipped: no {MODELS / (m.name + '.onnx')} (bench/zoo.py makes it)")
            continue
        common.log(m.name)
        with tempfile.TemporaryDirectory() as tmp:
            work = args.keep / m.name if args.keep else Path(tmp)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            row = measure(m, args.granularity.split(","), args.gap, work, args.cost)
        common.log(f"  {json.dumps({k: v for k, v in row.get('ptq', {}).items() if k != 'pareto'})}")
        merged = json.loads(args.json.read_text()) if args.json.exists() else {}  # another run may have written
        merged[m.name] = row
        args.json.write_text(json.dumps(merged, indent=1))
    merged = json.loads(args.json.read_text()) if args.json.exists() else {}
    order = [m.name for m in everything]
    rows = sorted(merged.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    body = render(rows, args.gap)
    shown = next((r for r in rows if r.get("ptq", {}).get("pareto")), None)
    if shown:
        body += pareto_table(shown)
    print(body)
    if not args.no_write:
        common.write_section("amp-corpus", "Mixed precision on the real models: 16-bit activations only where "
                             "needed (ptq --min-sqnr)", body)


if __name__ == "__main__":
    main()
