#!/usr/bin/env python3
"""Speed of empirical bias correction, and how it grows with depth.

* Full-size MobileNetV2 after fold-bn (64 random samples 224x224, the same .npy as
  bench_quantsim.py) and the sample models after fold-bn (the first 64 samples of
  sample_models/calib.npz): ``api.bias_correct(method="empirical")`` (W8A8,
  default config), batch size 32, against one plain FP32 onnxruntime pass over
  the same samples (default session options) in the same process. Also the
  full-size MobileNetV2 with 256 samples: more than one correction run holds
  (64 MB of input or 4 GB of the model's summed activations a run), so several runs.
* Depth scaling: plain chains of Conv3x3 + BatchNormalization + Relu (32
  channels, 32x32, 16 samples) with 10, 20, 40, 80 convs, BN folded: time, time
  per layer (constant when the cost grows linearly with depth, as
  bias_correction.py promises) and the number of correction runs.

Each run is in a fresh process (spawn); peak RSS is read after the first run.
Goal: at most 5x one FP32 pass, growing linearly with depth.
Run: ``python bench/bench_bias_correction.py`` (writes the ``bias_correction`` section).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

GOAL = 5.0
N_SAMPLES = 64
MANY_SAMPLES = 256
BATCH = 32
DEPTHS = (10, 20, 40, 80)
CHAIN_C, CHAIN_HW, CHAIN_SAMPLES = 32, 32, 16


def build_chain(depth: int) -> Path:
    """Conv3x3 (no bias) + BN + Relu, ``depth`` times, 32 channels; BN folded copy returned."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = c.DATA / f"chain_{depth}.onnx"
    if not path.exists():
        rng = np.random.default_rng(depth)
        nodes, inits = [], []
        x = "input"
        for i in range(depth):
            w = rng.normal(0.0, np.sqrt(2.0 / (CHAIN_C * 9)), (CHAIN_C, CHAIN_C, 3, 3)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
            bn = [rng.uniform(0.5, 1.5, CHAIN_C), rng.normal(0.0, 0.2, CHAIN_C), rng.normal(0.0, 0.1, CHAIN_C),
                  rng.uniform(0.5, 2.0, CHAIN_C)]
            names = [f"bn{i}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            inits += [numpy_helper.from_array(a.astype(np.float32), n) for a, n in zip(bn, names)]
            nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight"], [f"conv{i}"], name=f"Conv_{i}",
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *names], [f"bn{i}"], name=f"BN_{i}",
                                          epsilon=1e-5))
            x = f"relu{i}" if i < depth - 1 else "output"
            nodes.append(helper.make_node("Relu", [f"bn{i}"], [x], name=f"Relu_{i}"))
        graph = helper.make_graph(
            nodes, f"chain{depth}",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", CHAIN_C, CHAIN_HW, CHAIN_HW])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", CHAIN_C, CHAIN_HW, CHAIN_HW])],
            initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        c.DATA.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
    return c.folded_copy(path)


def many_samples() -> Path:
    """MANY_SAMPLES random 224x224 samples (seeded), for the several-runs row."""
    return c.random_npy(f"mobilenetv2_samples_{MANY_SAMPLES}", (MANY_SAMPLES, 3, 224, 224), seed=3)


def chain_samples() -> Path:
    return c.random_npy(f"chain_samples_{CHAIN_SAMPLES}", (CHAIN_SAMPLES, CHAIN_C, CHAIN_HW, CHAIN_HW), seed=1)


# ---------------------------------------------------------------------------- child
def bc_child(model_path: str, data_path: str, num_samples: int, bs: int, n: int, n_fp32: int) -> dict:
    """Bias correction ``n`` times (fresh model each), each followed by FP32 passes (``n_fp32`` in all).

    The FP32 passes are interleaved with the corrections (the machine's load drifts) and start
    after the peak RSS of the first correction was read.
    """
    import onnxruntime as ort

    from aimetcli import api
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.quantsim.placement import QuantOptions

    times, hwm, runs, grids, corrected, fp32, cold = [], 0, 0, False, 0, [], []
    sess = batches = None
    per_round = max(1, -(-n_fp32 // n))
    for r in range(n):
        model, _ = api.load(model_path)  # not timed
        dataset = open_data(data_path, input_specs(model), num_samples=num_samples)
        summary = api.bias_correct(model, dataset, QuantOptions(), method="empirical",
                                   run=api.RunOptions(batch_size=bs))
        times.append(summary.seconds)
        runs, grids, corrected = summary.runs, summary.grids_in_run, len(summary.corrected)
        if r == 0:
            hwm = c.peak_rss()
            # the floor, on exactly the batches the correction read
            batches = [dict(b) for b in dataset.batches(bs)]
        # a cold pass too: a new session (fresh arena) and its first pass, as a one-shot tool pays
        t0 = time.perf_counter()
        sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        for feeds in batches:
            sess.run(None, feeds)
        cold.append(time.perf_counter() - t0)
        for _ in range(per_round):
            t0 = time.perf_counter()
            for feeds in batches:
                sess.run(None, feeds)
            fp32.append(time.perf_counter() - t0)
        del dataset
    n_layers = sum(1 for node in model.graph if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"))
    return {"times": times, "fp32": fp32, "cold": cold, "peak": hwm, "runs": runs, "grids": grids,
            "corrected": corrected, "layers": n_layers}


# ---------------------------------------------------------------------------- report
def _med(xs):
    return c.Timing(xs).median


def report(models: list[dict], chains: list[dict]) -> str:
    rows, checks = [], []
    for r in models:
        f, t = _med(r["fp32"]), _med(r["times"])
        cold = _med(r["cold"])
        rows.append([r["model"], r["samples"], r["corrected"], c.fmt_s(f), c.fmt_s(cold), c.fmt_s(t),
                     c.fmt_x(t / f), c.fmt_x(t / cold), r["runs"], "yes" if r["grids"] else "no",
                     c.fmt_mb(r["peak"])])
        checks.append(f"{r['model']} ({r['samples']} samples) {c.verdict(t / f, GOAL)} ({t / f:.1f}x)")
    crow = []
    for r in chains:
        f, t = _med(r["fp32"]), _med(r["times"])
        crow.append([r["depth"], c.fmt_s(f), c.fmt_s(t), c.fmt_x(t / f), f"{t / r['depth'] * 1000:.1f} ms",
                     r["runs"], c.fmt_mb(r["peak"])])
        checks.append(f"chain {r['depth']} {c.verdict(t / f, GOAL)} ({t / f:.1f}x)")
    parts = [
        f"Empirical bias correction (`api.bias_correct`, method empirical, W8A8 default config, batch size {BATCH}) "
        "against one FP32 onnxruntime pass over the same samples (default session options, made in the same "
        "process between the corrections: the shared machine's load drifts; 'FP32 pass' with a warm session, "
        "'cold' = creating the session and its first pass, what a one-shot command pays); median. The correction "
        "itself is one onnxruntime run per chunk of data ('runs') of a graph holding the FP32 model, the sim and "
        "(when 'grids in run') the float copy quantsim calibrates on. "
        f"Goal: at most {GOAL:.0f}x the FP32 pass.\n",
        c.table(["model", "samples", "layers corrected", "FP32 pass", "FP32 cold", "bias correction", "x FP32",
                 "x cold", "runs", "grids in run", "peak RSS"], rows),
    ]
    if chains:
        first, last = chains[0], chains[-1]
        per_first = _med(first["times"]) / first["depth"]
        per_last = _med(last["times"]) / last["depth"]
        parts += [
            f"\nDepth scaling: Conv3x3+BN+Relu chains, {CHAIN_C} channels, {CHAIN_HW}x{CHAIN_HW}, "
            f"{CHAIN_SAMPLES} samples (one batch), BN folded first:\n",
            c.table(["convs", "FP32 pass", "bias correction", "x FP32", "per conv", "runs", "peak RSS"], crow),
            f"\nTime per conv at {last['depth']} convs / at {first['depth']}: {per_last / per_first:.2f} "
            "(1 = linear growth, "
            f"{last['depth'] / first['depth']:.0f} = quadratic).",
        ]
    parts.append("\nGoal check: " + "; ".join(checks) + ".")
    return "\n".join(parts)


def main() -> int:
    from bench_quantsim import make_samples

    src = c.ensure_mobilenetv2()
    models = []
    c.log("bias correction: mobilenetv2_full")
    # two corrections (about 10-40 s each on this machine) keep `make bench` under 10 minutes
    res, _ = c.in_child(bc_child, str(c.folded_copy(src)), str(make_samples()), N_SAMPLES, BATCH,
                        c.repeats(2), c.repeats(4))
    models.append({"model": src.stem, "samples": N_SAMPLES, **res})
    # more data than one correction run holds (AIMET suggests 500-1000 samples): several runs
    c.log(f"bias correction: mobilenetv2_full, {MANY_SAMPLES} samples")
    res, _ = c.in_child(bc_child, str(c.folded_copy(src)), str(many_samples()), MANY_SAMPLES, BATCH,
                        c.repeats(1), c.repeats(2))
    models.append({"model": src.stem, "samples": MANY_SAMPLES, **res})
    calib = c.sample_calib()
    if calib is not None:
        for path in c.sample_models():
            c.log(f"bias correction: {path.stem}")
            res, _ = c.in_child(bc_child, str(c.folded_copy(path)), str(calib), N_SAMPLES, BATCH,
                                c.repeats(3), c.repeats(5))
            models.append({"model": path.stem, "samples": N_SAMPLES, **res})
    chains = []
    data = chain_samples()
    for depth in DEPTHS:
        c.log(f"bias correction: chain of {depth} convs")
        res, _ = c.in_child(bc_child, str(build_chain(depth)), str(data), CHAIN_SAMPLES, CHAIN_SAMPLES,
                            c.repeats(3), c.repeats(5))
        chains.append({"depth": depth, **res})
    body = report(models, chains)
    c.write_section("bias_correction", "bias correction", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
