"""How close a quantized zoo model stays to FP32, and whether FP32 itself does its job.

All numbers are taken on the evaluation set, batch by batch (a recognizer's logits
for 64 lines are ~200 MB), on the first float output:

* SQNR = 10 log10(sum(fp32^2) / sum((fp32 - q)^2)) over the whole set, in dB.
* Task agreement with FP32: top-1 agreement (cls, orientation); exact agreement of
  the greedy CTC index sequences (rec: argmax per time step, repeats collapsed,
  blank 0 dropped); mean per-image IoU of the probability maps thresholded at 0.3
  (det, DBNet's own threshold); box-match F1 (yolo, :func:`box_f1`, below).
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
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

BATCH = 8
MASK_THRESHOLD = 0.3


def _options(optimize: bool, advised: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if advised:  # the option export names for MatMuls reading 16-bit or float activations
        from aimetcli.runtime import MATMUL_NBITS_OPTION

        opts.add_session_config_entry(MATMUL_NBITS_OPTION, "1")
    return opts


def session(path: str, optimize: bool, advised: bool = False) -> ort.InferenceSession:
    """onnxruntime with its default optimizations (a deployment) or none (QDQ as exact float emulation);
    ``advised``: with the session option aimetcli's export names (runtime.ADVISED)."""
    return ort.InferenceSession(path, _options(optimize, advised), providers=["CPUExecutionProvider"])


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
    if task == "yolo":
        return [box_f1(r, b) for r, b in zip(ref, q)]
    if task == "faces":
        return [box_f1(r, b, conf=TRAINED_CONF) for r, b in zip(ref, q)]
    return [float(v) for v in ref.argmax(-1) == q.argmax(-1)]


# ---------------------------------------------------------------------------- YOLO boxes
# A model's boxes on an image: best class per anchor, class-aware NMS, its TOP_K best with a score
# above 0. Not ultralytics' conf=0.25: on random weights (bench/zoo_export_yolo.py) the photos split
# into those with no box above it and those with hundreds, many anchors sit near it and FP32's own
# boxes flip there under noise far below a quantizer's. The top boxes of each image instead: 20 is
# about the number of objects a trained YOLOv8n reports on a busy photo. A model whose scores
# rounded to 0 finds no box (F1 0).
TOP_K = 20
NMS_IOU = 0.5
MATCH_IOU = 0.5
# A trained detector (task ``faces``) keeps the boxes a user would see: scores of at least
# ultralytics' predict default; images where neither model finds a box do not count.
TRAINED_CONF = 0.25


def yolo_boxes(head: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's [4 + classes, anchors] head as (xyxy boxes [A, 4], best score [A], its class [A]).

    Rows 0-3 are cx, cy, w, h in input pixels, the rest sigmoid class scores; each anchor
    keeps its best class (ultralytics' NMS without multi_label).
    """
    cx, cy, w, h = head[:4]
    scores = head[4:]
    cls = scores.argmax(0)
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    return xyxy, scores[cls, np.arange(scores.shape[1])], cls


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes [n, 4] x [m, 4] -> [n, m] (0 where the union is empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, limit: int, conf: float = 0.0) -> np.ndarray:
    """Indices kept by greedy class-aware NMS (IoU > NMS_IOU with a better box of the same class
    suppresses), best first, among scores above ``conf`` (0) or at least it (> 0), at most ``limit``."""
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= conf] if conf > 0 else order[scores[order] > 0]
    kept: list[int] = []
    for i in order:
        if kept:
            same = np.asarray(kept)[cls[kept] == cls[i]]
            if same.size and box_iou(boxes[i:i + 1], boxes[same]).max() > NMS_IOU:
                continue
        kept.append(int(i))
        if len(kept) == limit:
            break
    return np.asarray(kept, dtype=np.int64)


def head_boxes(head: np.ndarray, conf: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyxy, score, class) of one image's boxes after NMS, best first: with ``conf`` 0 its TOP_K
    best with scores above 0, else every box scoring at least ``conf``."""
    boxes, scores, cls = yolo_boxes(head)
    keep = nms(boxes, scores, cls, TOP_K if conf == 0 else len(scores), conf)
    return boxes[keep], scores[keep], cls[keep]


def box_f1(ref: np.ndarray, q: np.ndarray, conf: float = 0.0) -> float:
    """Box-match F1 of a quantized head ``q`` against FP32's ``ref`` on one image (both [4 + C, A]).

    Each keeps its :func:`head_boxes`. A quantized box, best first, matches the unmatched FP32
    box of the same class with the highest IoU when that IoU >= MATCH_IOU.
    F1 = 2 matches / (FP32 boxes + quantized boxes); when neither has a box, 1 (``conf`` 0) or NaN
    (a trained detector's empty image, left out of the mean).
    """
    rb, _, rc = head_boxes(ref, conf)
    qb, _, qc = head_boxes(q, conf)
    if len(rb) + len(qb) == 0:
        return 1.0 if conf == 0 else float("nan")
    free = np.ones(len(rb), bool)
    matches = 0
    if len(rb) and len(qb):
        iou = box_iou(qb, rb)
        iou[qc[:, None] != rc[None, :]] = 0.0
        for row in iou:
            row = np.where(free, row, 0.0)
            j = int(row.argmax())
            if row[j] >= MATCH_IOU:
                free[j] = False
                matches += 1
    return 2 * matches / (len(rb) + len(qb))


@dataclass
class Closeness:
    sqnr_db: float
    task: float  # agreement with FP32, 0..1
    scores_sqnr_db: float | None = None  # detectors: of the class scores (rows 4:) alone
    # per evaluation sample: FP32's energy, the error's energy, the task agreement (NaN: not counted)
    per_sample: dict[str, list[float]] = field(default_factory=dict)


DETECTORS = ("yolo", "faces")


def compare(fp32: ort.InferenceSession, quant: ort.InferenceSession, name: str, x: np.ndarray,
            task: str) -> Closeness:
    signal = noise = score_signal = score_noise = 0.0
    agree: list[float] = []
    signals: list[float] = []
    noises: list[float] = []
    for s in batches(x):
        ref = first_float_output(fp32, name, x[s]).astype(np.float64)
        q = first_float_output(quant, name, x[s]).astype(np.float64)
        signal += float((ref ** 2).sum())
        noise += float(((ref - q) ** 2).sum())
        if ref.ndim and ref.shape[0] == s.stop - s.start:
            signals += (ref ** 2).reshape(len(ref), -1).sum(1).tolist()
            noises += ((ref - q) ** 2).reshape(len(ref), -1).sum(1).tolist()
        if task in DETECTORS:
            score_signal += float((ref[:, 4:] ** 2).sum())
            score_noise += float(((ref[:, 4:] - q[:, 4:]) ** 2).sum())
        agree += _agreements(task, ref, q)

    def db(sig: float, err: float) -> float:
        return float("inf") if err == 0 else 10 * float(np.log10(sig / err)) if sig > 0 else float("-inf")

    per_sample = {"signal": signals, "noise": noises, "task": agree} if len(signals) == x.shape[0] else {}
    return Closeness(db(signal, noise), float(np.nanmean(agree)) if not np.all(np.isnan(agree)) else float("nan"),
                     db(score_signal, score_noise) if task in DETECTORS else None, per_sample)


def paired_interval(a: dict, b: dict, rounds: int = 2000, level: float = 0.9) -> dict | None:
    """Paired bootstrap over the evaluation samples of two models' per-sample numbers
    (Closeness.per_sample of each, the same samples): the ``level`` interval of the difference
    a - b in output SQNR (dB) and in task agreement (points), resampling the samples as another
    draw of evaluation data would. None without per-sample numbers for both."""
    if not a or not b or len(a["signal"]) != len(b["signal"]) or len(a["signal"]) < 2:
        return None
    rng = np.random.default_rng(0)
    n = len(a["signal"])
    idx = rng.integers(0, n, size=(rounds, n))
    sig = np.asarray(a["signal"])[idx].sum(1)
    tiny = np.finfo(np.float64).tiny
    db = 10 * np.log10((np.asarray(b["noise"])[idx].sum(1) + tiny) / (np.asarray(a["noise"])[idx].sum(1) + tiny))
    db = db[np.isfinite(db) & (sig > 0)]
    ta, tb = np.asarray(a["task"], np.float64)[idx], np.asarray(b["task"], np.float64)[idx]
    with np.errstate(invalid="ignore"):
        dt = 100 * (np.nanmean(ta, axis=1) - np.nanmean(tb, axis=1))
    dt = dt[np.isfinite(dt)]
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"sqnr_db": [float(v) for v in np.percentile(db, q)] if db.size else None,
            "task_points": [float(v) for v in np.percentile(dt, q)] if dt.size else None,
            "samples": n}


# between a Softmax and the graph output: output quantizers and value-preserving ops
_PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                 "Clip"}


def logits_session(path: str, optimize: bool, advised: bool = False) -> ort.InferenceSession | None:
    """A session of the model at ``path`` whose only output is the input of the Softmax that
    computes its first output (through output quantizers and Reshape-like ops), or None when
    that output is no Softmax's. Class probabilities of a confident classifier are saturated, so
    their SQNR is decided by the few samples near the decision boundary; the logits carry the
    network's error on every sample."""
    import onnx

    model = onnx.load(path)
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(model.graph.output[0].name)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        return None
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), _options(optimize, advised), providers=["CPUExecutionProvider"])


def logits_sqnr(fp32: ort.InferenceSession, quant: ort.InferenceSession, name: str, x: np.ndarray) -> float:
    """SQNR (dB) of ``quant``'s only output against ``fp32``'s over ``x``. The two may differ in
    shape by a reshape (aimetcli runs a 3-D MatMul + bias head as a Gemm on [T*N, H] rows, and its
    Softmax there): compared element by element in the same order."""
    signal = noise = 0.0
    for s in batches(x):
        ref = np.asarray(fp32.run(None, {name: x[s]})[0], np.float64)
        q = np.asarray(quant.run(None, {name: x[s]})[0], np.float64).reshape(ref.shape)
        signal += float((ref ** 2).sum())
        noise += float(((ref - q) ** 2).sum())
    return float("inf") if noise == 0 else 10 * float(np.log10(signal / noise))


def _box_covered(mask: np.ndarray, box: np.ndarray) -> bool:
    x0, y0, x1, y1 = (int(v) for v in box)
    region = mask[max(y0, 0):y1, max(x0, 0):x1]
    return region.size > 0 and region.mean() >= 0.3


def fp32_sanity(task: str, fp32: ort.InferenceSession, name: str, x: np.ndarray, truth: dict[str, np.ndarray],
                alphabet: list[str] | None) -> float:
    """How often FP32 gets the rendered truth right (see the module docstring), 0..1."""
    hits: list[float] = []
    if task in ("classifier", "yolo"):  # random weights: nothing to be right about
        return float("nan")
    for s in batches(x):
        out = first_float_output(fp32, name, x[s])
        if task == "rec":
            texts = ["".join(alphabet[c] for c in seq) for seq in ctc_sequences(out)]
            hits += [float(t.replace(" ", "") == str(r).replace(" ", "")) for t, r in zip(texts, truth["text"][s])]
        elif task == "faces":  # face cells with an FP32 box centred inside
            for head, cells in zip(out, truth["boxes"][s]):
                found, _, _ = head_boxes(head, TRAINED_CONF)
                centres = (found[:, :2] + found[:, 2:]) / 2
                hits += [float(bool(np.any((centres >= c[:2]).all(1) & (centres < c[2:]).all(1))))
                         for c in cells if c[0] >= 0]
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


def self_check() -> None:
    """box_f1 on synthetic heads (the zoo metrics have no tests in tests/: they are bench code)."""
    rng = np.random.default_rng(0)
    anchors, classes = 400, 80
    head = np.zeros((4 + classes, anchors), np.float32)
    head[0], head[1] = rng.uniform(0, 640, anchors), rng.uniform(0, 640, anchors)
    head[2:4] = rng.uniform(20, 60, (2, anchors))
    head[4:] = rng.uniform(0, 0.1, (classes, anchors))
    head[4 + rng.integers(classes, size=30), rng.choice(anchors, 30, replace=False)] = rng.uniform(0.5, 1, 30)
    assert box_f1(head, head) == 1.0, "a head against itself"
    zeroed = head.copy()
    zeroed[4:] = 0
    assert box_f1(head, zeroed) == 0.0, "scores rounded to 0 find no box"
    shifted = head.copy()
    shifted[0] += 0.5 * head[2]  # half a box width: IoU 1/3 < MATCH_IOU
    assert box_f1(head, shifted) == 0.0, "boxes moved by half their width"
    nudged = head.copy()
    nudged[:2] += 1.0  # one pixel: IoU > 0.9
    assert box_f1(head, nudged) == 1.0, "boxes moved by a pixel"
    relabelled = head.copy()
    relabelled[4:] = np.roll(head[4:], 1, axis=0)  # every best class changes
    assert box_f1(head, relabelled) == 0.0, "another class at the same place"
    two = np.zeros((4 + 2, 2), np.float32)
    two[:4] = [[100, 400], [100, 400], [50, 50], [50, 50]]
    two[4:] = [[0.9, 0.0], [0.0, 0.8]]
    one = two.copy()
    one[5, 1] = 0.0  # the second box's score rounds to 0
    assert abs(box_f1(two, one) - 2 / 3) < 1e-9, "F1 = 2 * 1 match / (2 + 1 boxes)"


if __name__ == "__main__":
    self_check()
    print("zoo_metrics self-check passed")
