"""How fast ptq's deployable model_qdq.onnx runs in onnxruntime, against the FP32 model and
against another checkout's ptq (the corpus models that fold-bn's bias-Add fold changes).

Per model: ptq (defaults, the zoo's 32 calibration samples) from each checkout into its own
directory, then the FP32 model and each model_qdq.onnx in onnxruntime with its default (all)
optimizations, one sample a run over the 32 samples, 5 passes alternated, median ms per sample;
which ops onnxruntime runs the Convs as (QLinearConv or float Conv, from its optimized graph);
and each model_qdq's output SQNR against FP32 on the evaluation samples, as deployed.

    .venv-zoo/bin/python bench/deploy_speed.py --base /tmp/base --models a,b [--no-write]
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import common
from zoo import model_and_data
from ptq_versus import checkouts, corpus_models, versus_parser
from zoo_models import ZOO

PASSES = 5


def _session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _conv_kinds(path: Path, work: Path) -> str:
    optimized = work / "optimized.onnx"
    _session(path, optimized)
    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    return f"{ops.count('QLinearConv')} int / {ops.count('Conv') + ops.count('FusedConv')} float"


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - out) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def main() -> None:
    ap = versus_parser(__doc__)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sides = checkouts(args.base)
    rows = []
    for model in corpus_models(args.models):
        name = model.name
        path, ds, input_name = model_and_data(model)
        qdq = {}
        for label, root in sides.items():
            out = ZOO / "deploy" / name / label
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            common.run_process([common.AIMETCLI, "ptq", str(path), "-o", str(out), "--data", str(ds.calib)],
                               env={**os.environ, "PYTHONPATH": root})
            qdq[label] = out / "model_qdq.onnx"
        models = {"fp32": path, **qdq}
        sessions = {k: _session(p) for k, p in models.items()}
        calib = np.load(ds.calib)[input_name]
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(PASSES):
            for k, sess in sessions.items():
                t = time.perf_counter()
                for i in range(calib.shape[0]):
                    sess.run(None, {input_name: calib[i:i + 1]})
                times[k].append((time.perf_counter() - t) / calib.shape[0] * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        evaluation = np.load(ds.eval)[input_name]
        ref = np.concatenate([sessions["fp32"].run(None, {input_name: evaluation[i:i + 1]})[0]
                              for i in range(evaluation.shape[0])])
        sqnr = {k: _sqnr(ref, np.concatenate([sessions[k].run(None, {input_name: evaluation[i:i + 1]})[0]
                                              for i in range(evaluation.shape[0])])) for k in qdq}
        kinds = {k: _conv_kinds(p, p.parent) for k, p in qdq.items()}
        common.log(f"{name}: ms/sample {ms}, SQNR {sqnr}, convs {kinds}")
        rows.append([name, f"{ms['fp32']:.2f}", f"{ms['base']:.2f} ({ms['base'] / ms['fp32']:.2f}x)",
                     f"{ms['this']:.2f} ({ms['this'] / ms['fp32']:.2f}x)", kinds["base"], kinds["this"],
                     f"{sqnr['base']:.2f}", f"{sqnr['this']:.2f}"])
    table = common.table(["model", "FP32 ms", "base model_qdq ms (/ FP32)", "this model_qdq ms (/ FP32)",
                          "base Convs", "this Convs", "base SQNR dB", "this SQNR dB"], rows)
    body = (f"ptq (defaults, 32 calibration samples) from two checkouts (base: {sides['base']}; this: "
            f"{sides['this']}); "
            "each model in onnxruntime (CPU, all optimizations), one sample a run over the 32 calibration "
            f"samples, {PASSES} passes alternated, median ms per sample; Convs: how onnxruntime's optimized graph "
            "runs them (QLinearConv, or float Conv between DequantizeLinear and the rest); SQNR: the output "
            "against FP32 on the evaluation samples, as deployed.\n\n" + table)
    common.publish("deploy-speed", "ptq's model_qdq.onnx in onnxruntime: speed against FP32 (issue 15)", body,
                   args.no_write)


if __name__ == "__main__":
    main()
