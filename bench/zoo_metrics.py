"""How close a quantized zoo model stays to FP32, and whether FP32 itself does its job.

All numbers are taken on the evaluation set, batch by batch (a recognizer's logits
for 64 lines are ~200 MB), on the first float output:

* SQNR = 10 log10(sum(fp32^2) / sum((fp32 - q)^2)) over the whole set, in dB.
* Task agreement with FP32: top-1 agreement (cls, orientation); exact agreement of
  the greedy CTC index sequences (rec: argmax per time step, repeats collapsed,
  blank 0 dropped); mean per-image IoU of the probability maps thresholded at 0.3
  (det, DBNet's own threshold).
* FP32 sanity against the rendered truth: accuracy (cls, orientation); the share of
  lines read exactly, spaces ignored (rec); the share of text lines whose box is at
  least 30% covered by the mask (det; DBNet shrinks its regions). None for the
  random-weight classifiers exported from timm.

:func:`run_quantize_static` is onnxruntime's own flow for comparison:
``quant_pre_process`` then ``quantize_static`` (QDQ, per-tensor, MinMax, its default
int8 types), meant to run in a child process (common.in_child) for time and memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

BATCH = 8
MASK_THRESHOLD = 0.3


def session(path: str, optimize: bool) -> ort.InferenceSession:
    """onnxruntime with its default optimizations (a deployment) or none (QDQ as exact float emulation)."""
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def first_float_output(sess: ort.InferenceSession, name: str, x: np.ndarray) -> np.ndarray:
    outs = sess.run(None, {name: x})
    return next(np.asarray(o) for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f")


def batches(x: np.ndarray) -> Iterator[slice]:
    for i in range(0, x.shape[0], BATCH):
        yield slice(i, min(i + BATCH, x.shape[0]))


def ctc_sequences(logits: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decode of [N, T, C]: argmax per step, repeats collapsed, blank 0 dropped."""
    best = logits.argmax(-1)
    out = []
    for row in best:
        keep = np.ones(row.shape, bool)
        keep[1:] = row[1:] != row[:-1]
        out.append(tuple(int(c) for c in row[keep & (row != 0)]))
    return out


def masks(prob: np.ndarray) -> np.ndarray:
    return prob.reshape(prob.shape[0], -1) > MASK_THRESHOLD


def _agreements(task: str, ref: np.ndarray, q: np.ndarray) -> list[float]:
    """Per-sample agreement of ``q`` with ``ref`` (1/0, or IoU for det)."""
    if task == "rec":
        return [float(a == b) for a, b in zip(ctc_sequences(ref), ctc_sequences(q))]
    if task == "det":
        a, b = masks(ref), masks(q)
        inter, union = (a & b).sum(1), (a | b).sum(1)
        return [1.0 if u == 0 else i / u for i, u in zip(inter, union)]
    return [float(v) for v in ref.argmax(-1) == q.argmax(-1)]


@dataclass
class Closeness:
    sqnr_db: float
    task: float  # agreement with FP32, 0..1


def compare(fp32: ort.InferenceSession, quant: ort.InferenceSession, name: str, x: np.ndarray,
            task: str) -> Closeness:
    signal = noise = 0.0
    agree: list[float] = []
    for s in batches(x):
        ref = first_float_output(fp32, name, x[s]).astype(np.float64)
        q = first_float_output(quant, name, x[s]).astype(np.float64)
        signal += float((ref ** 2).sum())
        noise += float(((ref - q) ** 2).sum())
        agree += _agreements(task, ref, q)
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise) if signal > 0 else float("-inf")
    return Closeness(sqnr, float(np.mean(agree)))


def _box_covered(mask: np.ndarray, box: np.ndarray) -> bool:
    x0, y0, x1, y1 = (int(v) for v in box)
    region = mask[max(y0, 0):y1, max(x0, 0):x1]
    return region.size > 0 and region.mean() >= 0.3


def fp32_sanity(task: str, fp32: ort.InferenceSession, name: str, x: np.ndarray, truth: dict[str, np.ndarray],
                alphabet: list[str] | None) -> float:
    """How often FP32 gets the rendered truth right (see the module docstring), 0..1."""
    hits: list[float] = []
    if task == "classifier":  # random weights: nothing to be right about
        return float("nan")
    for s in batches(x):
        out = first_float_output(fp32, name, x[s])
        if task == "rec":
            texts = ["".join(alphabet[c] for c in seq) for seq in ctc_sequences(out)]
            hits += [float(t.replace(" ", "") == str(r).replace(" ", "")) for t, r in zip(texts, truth["text"][s])]
        elif task == "det":
            side = out.shape[-1]
            for prob, boxes in zip(out[:, 0] > MASK_THRESHOLD, truth["boxes"][s]):
                hits += [float(_box_covered(prob.reshape(-1, side), b)) for b in boxes if b[0] >= 0]
        else:
            hits += [float(v) for v in out.argmax(-1) == truth["label"][s]]
    return float(np.mean(hits)) if hits else float("nan")


class _Reader:
    """quantize_static's CalibrationDataReader over an array, BATCH samples at a time."""

    def __init__(self, name: str, x: np.ndarray):
        self._feeds = iter([{name: x[s]} for s in batches(x)])

    def get_next(self):
        return next(self._feeds, None)

    def rewind(self):  # not needed by MinMax; part of the interface
        pass


def run_quantize_static(src: str, dst: str, calib_npz: str, name: str) -> str:
    """quant_pre_process + quantize_static (QDQ, per-tensor, MinMax) of ``src`` into ``dst``; returns a note."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    note = ""
    src, dst, calib_npz = (os.path.abspath(p) for p in (src, dst, calib_npz))
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        # a failed symbolic shape inference leaves its temporary model and data files in the working
        # directory: work in the temporary one
        os.chdir(tmp)
        try:
            pre = f"{tmp}/pre.onnx"
            try:
                quant_pre_process(src, pre)
            except Exception as exc:  # symbolic shape inference fails on some exports: retry without it
                msg = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else ""
                note = f"quant_pre_process without symbolic shapes ({type(exc).__name__}{': ' + msg if msg else ''})"
                quant_pre_process(src, pre, skip_symbolic_shape=True)
            with np.load(calib_npz) as z:
                x = z[name]
            quantize_static(pre, dst, _Reader(name, x), quant_format=QuantFormat.QDQ, per_channel=False,
                            calibrate_method=CalibrationMethod.MinMax)
        finally:
            os.chdir(here)
    return note
