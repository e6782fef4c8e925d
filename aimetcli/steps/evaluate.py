"""evaluate as a facade step: run models over data, top-1 against labels, and how far two
models' outputs are apart (SQNR, max abs error, top-1 agreement).

ptq's judging reads the same measures (:func:`model_outputs`, :func:`compare_outputs`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import onnx_ir as ir

from aimetcli.calibration.data import DataSource, Dataset, as_dataset
from aimetcli.calibration.samples import SamplesFirst
from aimetcli.model_ops import ModelSource, as_model
from aimetcli.options import RunOptions
from aimetcli.records import jsonable

EVALUATION_BATCH = 64  # samples per onnxruntime run when the caller does not say


@dataclass
class OutputComparison:
    output: str
    sqnr_db: float
    max_abs_error: float


@dataclass
class EvaluateSummary:
    models: list[str]
    samples: int
    top1: list[float | None]
    comparisons: list[OutputComparison] = field(default_factory=list)
    top1_agreement: float | None = None
    seconds: float = 0.0
    scored_output: str | None = None  # the output top-1 and first_sqnr_db read (score_output)

    @property
    def first_sqnr_db(self) -> float | None:
        """SQNR (dB) of the second model's scored output against the first's, if comparable."""
        for c in self.comparisons:
            if c.output == self.scored_output:
                return c.sqnr_db
        return None

    def to_json(self) -> dict:
        return jsonable(self)


def sqnr_db(reference, test) -> float:
    from aimetcli.kernels.energy import energies

    e = energies(reference, test)
    return sqnr_of_energies(float(e.signal.sum()), float(e.noise.sum()))


def sqnr_of_energies(signal: float, noise: float) -> float:
    """10 log10(signal / noise) in dB: inf without noise, -inf without signal."""
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * math.log10(signal / noise))


def model_outputs(model: ir.Model, dataset, *, batch_size: int = EVALUATION_BATCH, optimization: str = "none",
                  progress=None, outputs: list[str] | None = None) -> list:
    """Every output of ``model`` (or those named in ``outputs``) over the data (one array per
    output, samples concatenated).

    A caller that compares several models with the same reference (ptq, after each stage) runs
    the reference once and passes its outputs to ``evaluate``."""
    return _run_models([model], [optimization], dataset, batch_size, progress, outputs)[0]


def _run_models(models: list[ir.Model], levels: list[str], dataset, batch_size: int, progress,
                outputs: list[str] | None = None) -> list[list]:
    """Each model's outputs over the data, the models run batch by batch side by side."""
    import numpy as np

    from aimetcli import runtime

    if not models:
        return []
    sessions = [runtime.Session(m, runtime.JUDGED[lvl]) for m, lvl in zip(models, levels)]
    first = [SamplesFirst(m, outputs) for m in models]
    collected: list[list[list[np.ndarray]]] = [[] for _ in sessions]
    for feeds in dataset.batches(batch_size):
        for i, sess in enumerate(sessions):
            collected[i].append(first[i](sess.run(feeds, outputs), feeds))
        if progress is not None:
            progress(1)
    return [[_joined([b[k] for b in batches]) for k in range(len(batches[0]))] if batches else []
            for batches in collected]


def _joined(parts: list):
    """The batches of one output as one array (the array itself when there is one batch)."""
    import numpy as np

    return parts[0] if len(parts) == 1 and isinstance(parts[0], np.ndarray) else np.concatenate(parts)


def evaluate(models: Sequence[ModelSource], data: DataSource, run: RunOptions | None = None, *,
             optimization: str | list[str] = "none", names: list[str] | None = None,
             reference_outputs: list | None = None) -> EvaluateSummary:
    """Top-1 of each model (when the data has labels); for two models, how far apart they are.

    ``data``: a Dataset, or a path / 'random:N' opened for the first model's inputs. ``run``:
    by default 64 samples per onnxruntime run. ``reference_outputs``: the first model's outputs
    on this data (``model_outputs``), when the caller has them already; that model is then not
    run again."""
    start = time.perf_counter()
    loaded = [as_model(m) for m in models]
    dataset = as_dataset(data, loaded[0]) if loaded else cast(Dataset, data)
    run = run or RunOptions(batch_size=EVALUATION_BATCH)
    levels = [optimization] * len(loaded) if isinstance(optimization, str) else list(optimization)
    skip = 1 if reference_outputs is not None and loaded else 0
    outputs = ([reference_outputs] if reference_outputs is not None and skip else []) + _run_models(
        loaded[skip:], levels[skip:], dataset, run.batch_size, run.progress)
    output_names = cast(list[str], [o.name for o in loaded[0].graph.outputs] if loaded else [])
    summary = compare_outputs(outputs, dataset.labels, names or [f"model{i}" for i in range(len(loaded))],
                              dataset.num_samples, output_names, loaded[0] if loaded else None)
    summary.seconds = time.perf_counter() - start
    return summary


def score_output(outputs: list) -> int | None:
    """Index of the output that top-1 and the headline SQNR read: the first floating-point
    output with a class axis (2-D or more; e.g. the logits of a model whose first output is its
    int64 argmax label), else the first floating-point output, else None."""
    floats = [k for k, o in enumerate(outputs) if getattr(o, "dtype", None) is not None and o.dtype.kind == "f"]
    return next((k for k in floats if outputs[k].ndim >= 2), floats[0] if floats else None)


def _predictions(logits, samples: int | None = None, argmax=None):
    """Class predictions: the argmax over axis 1 (the class axis of [N, C] logits and the channel
    axis of NCHW ones), [N] for a classifier (trailing axes of size 1 dropped), [N, H, W] for a
    dense predictor such as a segmentation net (agreement is then counted per position).

    With ``samples`` (evaluate's two-model comparison), None where the output cannot hold
    classes that way: axis 0 is not the samples' (a time-first sequence [T, N, C]), the class
    axis has one entry (a detector's probability map), or a 3-D output whose class axis nobody
    says ([N, C, L] and [N, L, C] look alike); ``argmax``: the Softmax's that computes the output
    (scored_tensors.softmax_argmax: its class axis, per sample and position)."""
    if logits.ndim < 2:
        return None
    if samples is not None:
        if logits.shape[0] != samples:
            return None
        if argmax is not None:
            pred = argmax(logits)
            return None if pred.size == logits.size else pred  # one entry along the class axis
        if logits.ndim == 3 or logits.shape[1] < 2:
            return None
    pred = logits.argmax(axis=1)
    if pred.ndim > 1 and all(d == 1 for d in pred.shape[1:]):
        pred = pred.reshape(pred.shape[0])
    return pred


def hits(pred, labels):
    """Per sample, whether the class prediction ``pred`` (:func:`_predictions`) is the label:
    None without labels or without one prediction a sample."""
    if labels is None or pred is None or pred.ndim != 1:
        return None
    return pred == labels[: len(pred)]


def correct(logits, labels):
    """:func:`hits` of ``logits``' top-1 classes."""
    return hits(_predictions(logits), labels) if logits is not None and labels is not None else None


def percent(flags) -> float | None:
    """The share of True in ``flags`` in percent (top-1 from :func:`correct`), None for None."""
    import numpy as np

    return None if flags is None else float(np.mean(flags) * 100.0)


def compare_outputs(outputs: list[list], labels, names: list[str], samples: int,
                    output_names: list[str], first_model=None) -> EvaluateSummary:
    """Top-1 of each model's scored output (:func:`score_output`) against ``labels`` (if any);
    for two models, SQNR and max abs error per floating-point output and how often their top-1
    agree (along the class axis of the Softmax that computes it in ``first_model``, where one
    does; see :func:`_predictions` for where there is no top-1)."""
    import numpy as np

    from aimetcli.kernels.energy import energies
    from aimetcli.scored_tensors import softmax_argmax

    k_scored = score_output(outputs[0]) if outputs and outputs[0] else None
    scored_name = output_names[k_scored] if k_scored is not None and k_scored < len(output_names) else None
    argmax = softmax_argmax(first_model, scored_name) if first_model is not None and scored_name else None
    top1: list[float | None] = []
    preds = []
    for outs in outputs:
        logits = outs[k_scored] if k_scored is not None and k_scored < len(outs) else None
        top1.append(percent(hits(_predictions(logits), labels)) if logits is not None and labels is not None
                    else None)
        preds.append(_predictions(logits, samples, argmax) if logits is not None else None)
    summary = EvaluateSummary(names, samples, top1)
    if scored_name is not None:
        summary.scored_output = scored_name
    if len(outputs) == 2:
        for k, name in enumerate(output_names):
            if k >= min(len(outputs[0]), len(outputs[1])):
                break
            a, b = outputs[0][k], outputs[1][k]
            if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape \
                    or a.dtype.kind != "f" or b.dtype.kind != "f":  # sequences, integers: no SQNR
                continue
            e = energies(a, b)
            summary.comparisons.append(OutputComparison(name, sqnr_of_energies(float(e.signal.sum()),
                                                                               float(e.noise.sum())), e.max_abs))
        if preds[0] is not None and preds[1] is not None:
            summary.top1_agreement = float(np.mean(preds[0] == preds[1]) * 100.0)
    return summary
