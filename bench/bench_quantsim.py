#!/usr/bin/env python3
"""Speed and memory of quantsim's calibration, against one FP32 onnxruntime pass.

Full-size MobileNetV2 after fold-bn, 64 random samples 224x224 (seed 0, one .npy
read memory-mapped by every contender), batch sizes 16 and 64:

* floor: one plain FP32 pass of onnxruntime over the samples (default session
  options, session creation not counted);
* aimetcli: ``api.quantsim`` (default config, W8A8 per-tensor) with
  ``--quant-scheme min-max`` and ``tf-enhanced``: its ``calibration_seconds``
  (weight encodings, calibration model, session, the pass, activation encodings)
  and its whole time (opset upgrade, placement, calibration, QDQ insertion);
* ``onnxruntime.quantization.quantize_static`` (QDQ, MinMax, per-tensor) with a
  CalibrationDataReader over the same batches (whole call, writes its model).

Each contender runs in its own fresh process (spawn); its peak RSS is read after
its first run, so it is the peak of a process that did exactly one run.
The three sample models are measured the same way on sample_models/calib.npz
(1,000 samples 1x28x28, batch size 64) when present.

Goals (issue): min-max within 1.5x the FP32 pass, tf-enhanced within 3x, peak
memory within 2x the FP32 pass's process.
Run: ``python bench/bench_quantsim.py`` (writes the ``quantsim`` section of RESULTS.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

GOAL_MINMAX, GOAL_TFE, GOAL_MEM = 1.5, 3.0, 2.0
N_SAMPLES = 64
BATCH_SIZES = (16, 64)
SAMPLES = c.DATA / f"mobilenetv2_samples_{N_SAMPLES}.npy"


def make_samples() -> Path:
    return c.random_npy(SAMPLES.stem, (N_SAMPLES, 3, 224, 224), seed=0)


def _array(data_path: str, key: str | None):
    import numpy as np

    if data_path.endswith(".npz"):
        return np.load(data_path)[key or "input"]
    return np.load(data_path, mmap_mode="r")


def _batches(x, bs: int):
    import numpy as np

    for i in range(0, len(x), bs):
        yield np.ascontiguousarray(x[i:i + bs], dtype=np.float32)


# ---------------------------------------------------------------------------- children
class _Floor:
    """FP32 passes interleaved with a contender's runs in its own process.

    The machine is shared and its load drifts: a contender's runs are compared with
    FP32 passes made between them (created after the peak RSS was read, so they do
    not count in it).
    """

    def __init__(self, model_path: str, data_path: str, bs: int):
        self.args = (model_path, data_path, bs)
        self.sess = None
        self.times: list[float] = []

    def measure(self) -> None:
        import onnxruntime as ort

        model_path, data_path, bs = self.args
        if self.sess is None:
            self.sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
            self.x = _array(data_path, None)
            self.name = self.sess.get_inputs()[0].name
        t0 = time.perf_counter()
        for b in _batches(self.x, bs):
            self.sess.run(None, {self.name: b})
        self.times.append(time.perf_counter() - t0)


def fp32_child(model_path: str, data_path: str, bs: int, n: int) -> dict:
    import onnxruntime as ort

    x = _array(data_path, None)
    base = c.current_rss()
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])  # default options
    session_s = time.perf_counter() - t0
    name = sess.get_inputs()[0].name
    times, hwm = [], 0
    for r in range(n):
        t0 = time.perf_counter()
        for b in _batches(x, bs):
            sess.run(None, {name: b})
        times.append(time.perf_counter() - t0)
        if r == 0:
            hwm = c.peak_rss()
    return {"times": times, "peak": hwm, "base": base, "session": session_s}


def ours_child(model_path: str, data_path: str, scheme: str, bs: int, n: int) -> dict:
    from aimetcli import api
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.kernels.quant import QuantScheme
    from aimetcli.quantsim.placement import QuantOptions

    base = c.current_rss()
    options = QuantOptions(scheme=QuantScheme(scheme))
    calib, total, hwm = [], [], 0
    floor = _Floor(model_path, data_path, bs)
    for r in range(n):
        model, _ = api.load(model_path)  # not timed; a fresh model each run
        dataset = open_data(data_path, input_specs(model))
        _, _, summary = api.quantsim(model, dataset, options, run=api.RunOptions(batch_size=bs))
        calib.append(summary.calibration_seconds)
        total.append(summary.seconds)
        if r == 0:
            hwm = c.peak_rss()
        del model, dataset
        floor.measure()
    return {"calib": calib, "times": total, "peak": hwm, "base": base, "floor": floor.times}


def ort_child(model_path: str, data_path: str, bs: int, n: int, workdir: str) -> dict:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static nags about pre-processing
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    x = _array(data_path, None)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.name = name
            self.it = _batches(x, bs)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {self.name: b}

    import onnx

    name = onnx.load(model_path, load_external_data=False).graph.input[0].name
    base = c.current_rss()
    times, hwm = [], 0
    floor = _Floor(model_path, data_path, bs)
    for r in range(n):
        t0 = time.perf_counter()
        quantize_static(model_path, str(Path(workdir) / "ort_qdq.onnx"), Reader(name),
                        quant_format=QuantFormat.QDQ, per_channel=False, calibrate_method=CalibrationMethod.MinMax,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        times.append(time.perf_counter() - t0)
        if r == 0:
            hwm = c.peak_rss()
        floor.measure()
    return {"times": times, "peak": hwm, "base": base, "floor": floor.times}


# ---------------------------------------------------------------------------- driver
def bench(label: str, model: Path, data: Path, batch_sizes, n_ours: int, n_fp32: int) -> list[dict]:
    rows = []
    work = c.scratch_dir()
    for bs in batch_sizes:
        c.log(f"quantsim: {label} batch {bs}")
        fp32, _ = c.in_child(fp32_child, str(model), str(data), bs, n_fp32)
        mm, _ = c.in_child(ours_child, str(model), str(data), "min-max", bs, n_ours)
        tfe, _ = c.in_child(ours_child, str(model), str(data), "tf-enhanced", bs, n_ours)
        ort, _ = c.in_child(ort_child, str(model), str(data), bs, n_ours, str(work))
        rows.append({"model": label, "bs": bs, "fp32": fp32, "minmax": mm, "tfe": tfe, "ort": ort})
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return rows


def _med(xs):
    return c.Timing(xs).median


def report(rows: list[dict]) -> str:
    speed, mem, checks = [], [], []
    for r in rows:
        f = _med(r["fp32"]["times"])
        mm_c, mm_t = _med(r["minmax"]["calib"]), _med(r["minmax"]["times"])
        tf_c, tf_t = _med(r["tfe"]["calib"]), _med(r["tfe"]["times"])
        o = _med(r["ort"]["times"])
        # each contender against the FP32 passes interleaved with its own runs
        mm_x, tf_x, o_x = (mm_c / _med(r["minmax"]["floor"]), tf_c / _med(r["tfe"]["floor"]),
                           o / _med(r["ort"]["floor"]))
        f_range = [_med(r[k]["floor"]) for k in ("minmax", "tfe", "ort")]
        # cold: creating the session and its first pass, in a fresh process (what calibration pays)
        cold = r["fp32"]["session"] + r["fp32"]["times"][0]
        speed.append([r["model"], r["bs"], c.fmt_s(f), f"{c.fmt_s(min(f_range))} - {c.fmt_s(max(f_range))}",
                      c.fmt_s(cold), c.fmt_s(mm_c), c.fmt_x(mm_x), c.fmt_x(mm_c / cold), c.fmt_s(mm_t),
                      c.fmt_s(tf_c), c.fmt_x(tf_x), c.fmt_x(tf_c / cold), c.fmt_s(tf_t), c.fmt_s(o), c.fmt_x(o_x)])
        fp = r["fp32"]["peak"]
        mem.append([r["model"], r["bs"], c.fmt_mb(fp), c.fmt_mb(r["minmax"]["peak"]),
                    c.fmt_x(r["minmax"]["peak"] / fp), c.fmt_mb(r["tfe"]["peak"]), c.fmt_x(r["tfe"]["peak"] / fp),
                    c.fmt_mb(r["ort"]["peak"]), c.fmt_x(r["ort"]["peak"] / fp),
                    c.fmt_mb(r["fp32"]["base"]), c.fmt_mb(r["minmax"]["base"])])
        checks.append(f"{r['model']} bs {r['bs']}: min-max {c.verdict(mm_x, GOAL_MINMAX)} "
                      f"({mm_x:.1f}x; against the cold pass {c.verdict(mm_c / cold, GOAL_MINMAX)}, "
                      f"{mm_c / cold:.1f}x), tf-enhanced {c.verdict(tf_x, GOAL_TFE)} ({tf_x:.1f}x; against the cold pass "
                      f"{c.verdict(tf_c / cold, GOAL_TFE)}, {tf_c / cold:.1f}x), memory "
                      f"min-max {c.verdict(r['minmax']['peak'] / fp, GOAL_MEM)} ({r['minmax']['peak'] / fp:.1f}x), "
                      f"tf-enhanced {c.verdict(r['tfe']['peak'] / fp, GOAL_MEM)} ({r['tfe']['peak'] / fp:.1f}x)")
    ref = c.AIMET_REF
    return "\n".join([
        "Time (median; FP32 = one onnxruntime pass over the samples with default session options, the floor, "
        "in a process of its own; calib = `api.quantsim`'s calibration_seconds, total = its whole time; ORT = "
        "`quantize_static`, QDQ, MinMax, per-tensor). The machine is shared and its load drifts, so each "
        "'x FP32' divides by the median of FP32 passes made in the contender's own process between its runs "
        "(their range across contenders in 'FP32 interleaved'). 'FP32 cold' = creating the session and its "
        "first pass in a fresh process: calibration always pays both (it runs a session of its own once), "
        "and the issue's reference FP32 pass (0.54 s on the full MobileNetV2) matches it better than a warm "
        "pass does; 'x cold' divides by it. "
        f"Goals: min-max calib within {GOAL_MINMAX}x FP32, tf-enhanced within {GOAL_TFE}x.\n",
        c.table(["model", "batch", "FP32 pass", "FP32 interleaved", "FP32 cold", "min-max calib", "x FP32",
                 "x cold", "min-max total",
                 "tf-enh calib", "x FP32", "x cold", "tf-enh total", "ORT quantize_static", "x FP32"], speed),
        f"\nAIMET reference (full MobileNetV2, 64 samples): FP32 pass {c.fmt_s(ref['fp32_pass'])}, AIMET-ONNX "
        f"compute_encodings (per-tensor) {c.fmt_s(ref['compute_encodings'])}, ORT quantize_static "
        f"{c.fmt_s(ref['ort_quantize_static'])}.",
        "\nPeak RSS of a fresh process doing one run (goal: within "
        f"{GOAL_MEM:.0f}x the FP32 process; 'after imports' = RSS before any model is loaded):\n",
        c.table(["model", "batch", "FP32 process", "min-max", "x", "tf-enhanced", "x", "ORT quantize_static", "x",
                 "FP32 after imports", "aimetcli after imports"], mem),
        "\nGoal check: " + "; ".join(checks) + ".",
    ])


def main() -> int:
    src = c.ensure_mobilenetv2()
    folded = c.folded_copy(src)
    samples = make_samples()
    rows = bench(src.stem, folded, samples, BATCH_SIZES, c.repeats(3), c.repeats(5))
    calib = c.sample_calib()
    if calib is not None:
        for path in c.sample_models():
            rows += bench(path.stem, c.folded_copy(path), calib, (64,), c.repeats(3), c.repeats(5))
    body = report(rows)
    c.write_section("quantsim", "quantsim calibration", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
