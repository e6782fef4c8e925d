"""ptq: AIMET's recommended post-training flow in one call, and the checks that decide what it keeps.

The calibration data are split (:func:`split_calibration`): the last quarter is held out of bias
correction, which fits per-channel means on the rest and is judged on the held-out samples. Every
sim is calibrated on all the samples, so for the other choices (granularity, range scheme,
equalization) no sample is held out of anything, and they are judged on all the calibration
samples. Every choice is a paired comparison of the candidate's sim against the incumbent's, both
against FP32 (:class:`Judge`); the candidate wins only when its SQNR gain clears
:meth:`Judge.margin` (per-channel weights against per-tensor: unless they lose by more than it,
a tie going to the finer grid, :func:`granularity_verdict`). The choices are taken in AIMET's order, each once (a coordinate
search, not every combination, and no stage run once per scheme):

1. fold-bn; the quantsim configuration: as quantsim would (the incumbent), per-channel weights
   where allowed (:func:`per_channel_candidate`), then the other range scheme
   (`ptq_candidates.scheme_candidates`) with the granularity chosen, and when per-channel lost, per-channel
   with the other scheme too (they interact: PP-OCRv5 rec, docs/design.md "A recognizer's blank");
2. + equalize with per-tensor weights (kept or not; no sim at all when equalization found nothing
   to scale), calibrated with each scheme (after fold-bn alone the schemes ranked the other way
   than after the whole flow in 4 of 16 sample-model cases, docs/design.md); with per-channel
   weights not tried unless asked (`ptq_candidates.why_not_equalized`);
3. + adaround below 8-bit weights (kept or not; fitted and judged as bias correction);
4. + bias-correct (kept or not);
5. the incumbent's sim is exported (sim.onnx, and what export writes).

The evaluation data, when given, only score the table's rows; they never decide. The steps
themselves are the facade's (aimetcli/steps/), imported from their modules.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g
from aimetcli import model_io
from aimetcli.calibration.data import DataSource, as_dataset
from aimetcli.model_ops import ModelSource, as_model, clone, require_float_model, sim_opset, upgrade_opset
from aimetcli.kernels.quant import QuantScheme
from aimetcli.options import AmpOptions, QuantOptions, RunOptions, WeightRange
from aimetcli.quantsim.observations import SharedObservations
from aimetcli.quantsim.per_layer import check_patterns
from aimetcli.quantsim.placement import place_quantizers
from aimetcli.ptq_candidates import (RECALIBRATION_REACH_DB, adaround_by_default, bias_moves_in_steps, median_move,
                                     per_channel_candidate, why_no_adaround, why_not_equalized, why_not_recalibrated)
from aimetcli.steps.bias_correct import bias_correct
from aimetcli.ptq_judge import (MARGIN_DB, SOURCE, Judge, KeepVerdict, Score, bias_correction_verdict,  # noqa: F401
                                equalization_verdict, granularity_verdict, keep_verdict, layer_errors,
                                split_calibration)
from aimetcli.ptq_report import Decision, PtqSummary, Stage, add_to_report, used_options
from aimetcli.steps.quantsim import quantsim
from aimetcli.steps.rewrite import equalize, fold_bn

def _describe(opts) -> str:
    granularity = {True: "per-channel", False: "per-tensor", None: "config granularity"}[opts.per_channel]
    return f"{opts.scheme.value} {granularity}"


@dataclass
class _Sim:
    model: ir.Model
    encodings: Any
    dropped: tuple[str, ...] = ()  # tensors whose activation quantizer quantsim left out (placement.skipped)
    runs: SharedObservations | None = None  # the observations its activation grids came from


class _Flow:
    """One ptq run's state: the data split, the judges, the rows and decisions as they are made."""

    def __init__(self, model, calib, evaluation, options, *, batch_size, on_stage, on_start, progress,
                 judge: Callable[..., Judge] = Judge):
        self.fp32 = clone(model)
        self.calib, self.options, self.batch_size = calib, options, batch_size
        self.on_stage, self.on_start, self.progress = on_stage, on_start, progress
        self.fit, self.held = split_calibration(calib)
        self.split = self.fit is not self.held
        self.stages: list[Stage] = []
        self.decisions: list[Decision] = []
        self.warnings: list[str] = []
        self.names: dict[int, str] = {}  # id(sim) -> the row that built it
        self.mixed: Any = None  # ptq_amp.amp_stage's result
        self.budget_judge: Judge | None = None  # the judge its budget is measured by
        # htp's kernels are QNN's, whose fixed-point arithmetic the float emulation is closer to
        # than onnxruntime's integer kernels (Judge)
        self._judge = functools.partial(judge, deployed=options.target != "htp")
        self.judge: Judge = None  # type: ignore[assignment]  # made by make_judge, before any sim is judged
        self.held_judge: Judge = None  # type: ignore[assignment]
        self.data_label = "evaluation" if evaluation is not None and evaluation.spec != calib.spec else "calibration"
        self.scorer = None
        self._scorer_seconds = 0.0
        if evaluation is not None:
            self.start("FP32 reference outputs (evaluation data)")
            t = time.perf_counter()
            self.scorer = self._judge(self.fp32, evaluation, batch_size)
            self._scorer_seconds = time.perf_counter() - t

    def make_judge(self, kept: dict[str, list]) -> float:
        """The judge of the calibration samples (all of them judge, but bias correction, fitted on
        ``fit`` and judged on ``held``), its row, and the seconds it took. ``kept``: FP32's values of
        its tensors run by run, kept by the folded model's calibration run (SharedObservations.keep;
        folding is exact); where one is missing, the judge runs FP32."""
        self.start("FP32 reference outputs")
        t = time.perf_counter()
        values = {name: np.concatenate(runs) for name, runs in kept.items() if runs}
        self.judge = self._judge(self.fp32, self.calib, self.batch_size, values)
        self.held_judge = self.judge.last(self.held) if self.split else self.judge
        seconds = time.perf_counter() - t
        scorer = self.scorer or self.judge
        self.add(Stage("fp32", scorer.top1_fp32, None, seconds + self._scorer_seconds,
                       "reference" if self.judge.ran_fp32 else "reference (kept by fold-bn's calibration run)",
                       None, None, self.data_label))
        return seconds

    def start(self, what: str) -> None:
        if self.on_start is not None:
            self.on_start(what)

    def add(self, stage: Stage) -> Stage:
        self.stages.append(stage)
        if self.on_stage is not None:
            self.on_stage(stage)
        return stage

    def simulate(self, m: ir.Model, opts, name: str, shared: SharedObservations | None = None) -> _Sim:
        """quantsim of ``m`` calibrated on all the calibration samples (ranges hardly fit the
        samples they see: a max or a clipping point, not a per-sample quantity); bias correction,
        which fits means, sees only the fit part. ``shared``: the runs over the data already made
        for ``m`` (candidates that differ only in their weight options reuse them)."""
        sim, encodings, summary = quantsim(m, self.calib, opts, RunOptions(self.batch_size, self.progress),
                                           check_loads=False, shared=shared)
        for w in summary.warnings:
            if "BatchNormalization" not in w and w not in self.warnings:
                self.warnings.append(w)
        self.names[id(sim)] = name
        sim.meta[SOURCE] = (m, encodings)  # the judge deploys it from them (ptq_judge._deployable)
        return _Sim(sim, encodings, tuple(s["tensor"] for s in summary.skipped), shared)

    def source_of(self, sim: _Sim) -> str:
        return f"the {self.names.get(id(sim.model), '?')} row's sim"

    def row(self, name: str, t0: float, sim: _Sim | None, note: str, kept: bool | None,
            verdict: KeepVerdict | None = None, calibration: bool = True) -> Stage:
        """A row for ``sim``: scored on the calibration samples (not with ``calibration`` False: a sim
        judged on the held-out samples and dropped is scored on those alone), and on the evaluation
        data if given."""
        gain = margin = None
        if verdict is not None and verdict.sqnr_before_db is not None and verdict.sqnr_after_db is not None:
            gain, margin = verdict.sqnr_after_db - verdict.sqnr_before_db, verdict.threshold_db
        if sim is None:
            return self.add(Stage(name, None, None, time.perf_counter() - t0, note, kept, None, self.data_label))
        held = self.judge.score(sim.model) if calibration or self.judge is self.held_judge else None
        shown = self.scorer.score(sim.model) if self.scorer is not None else held
        return self.add(Stage(name, shown.top1 if shown is not None else None,
                              shown.sqnr_db if self.scorer is not None and shown is not None else None,
                              time.perf_counter() - t0, note, kept, held.sqnr_db if held is not None else None,
                              self.data_label, gain, margin, verdict.veto if verdict is not None else ""))

    def verdict(self, fn: Callable, incumbent: _Sim, candidate: _Sim, held_out: bool = False) -> KeepVerdict:
        """``fn``'s verdict on all the calibration samples or, with ``held_out``, on the held-out ones."""
        judge = self.held_judge if held_out else self.judge
        before, after = judge.score(incumbent.model), judge.score(candidate.model)
        verdict = fn(self.fp32, incumbent.model, candidate.model, judge.data, batch_size=self.batch_size,
                     sqnr=judge.sqnr, margin_db=judge.margin(before, after), on=self.samples_label(held_out))
        veto = judge.veto(before, after) if verdict.kept else ""
        if verdict.kept and not veto and self.mixed is not None:
            from aimetcli.ptq_amp import budget_veto

            veto = budget_veto(self.mixed, self.budget_judge, incumbent.model, candidate.model)
        return dataclasses.replace(verdict, kept=False, veto=veto) if veto else verdict

    def samples_label(self, held_out: bool) -> str:
        return "held-out calibration" if held_out and self.split else "calibration"

    def note(self, choice: str, kept: bool | None, reason: str) -> None:
        self.decisions.append(Decision(choice, kept, reason))

    def decide(self, choice: str, verdict: KeepVerdict, reason_kept: str, reason_dropped: str) -> None:
        self.decisions.append(Decision(choice, verdict.kept, reason_kept if verdict.kept else verdict.veto or reason_dropped,
                                       verdict.sqnr_before_db, verdict.sqnr_after_db, verdict.threshold_db))


def ptq(model: ModelSource, calib: DataSource, evaluation: DataSource | None, options: QuantOptions | None = None,
        run: RunOptions | None = None, *, outdir: str, equalize_model: bool | None = None, correct_bias: bool = True,
        method: str = "hybrid", encoding_version: str = "1.0.0", schemes: tuple = (),
        per_channel: bool | None = None, on_stage=None, on_start=None, measure_layers: bool = False,
        adaround: bool | None = None, judge: Callable[..., Judge] = Judge, amp: AmpOptions | None = None) -> PtqSummary:
    """AIMET's recommended flow: fold-bn, choose the quantsim configuration, equalize,
    bias-correct, calibrate on all the data, export (the module docstring has the rules).

    ``model``: a path, an ``onnx.ModelProto`` or an onnx-ir model (rewritten in place; the final
    FP32 model is ``summary.model``); ``calib`` and ``evaluation``: Datasets or specs (a path or
    'random:N'). ``run``: batch size and progress of every step.
    ``schemes``: range schemes to try (`ptq_candidates.scheme_candidates`); empty: ``options.scheme``.
    ``per_channel``: True makes per-channel weights a candidate when ``options.per_channel`` is
    None (the CLI passes :func:`per_channel_candidate`'s verdict); None asks that function.
    ``evaluation``: data that score the rows (never decide); None: the rows show the held-out
    calibration samples' scores. ``on_start(description)`` is called before each expensive step,
    ``on_stage(Stage)`` after each row. ``measure_layers``: measure :func:`layer_errors` of the
    final sim on the held-out samples (for the HTML report). ``adaround``: learn the weights'
    rounding after equalization (:func:`adaround_by_default` when None), fitted on the fit
    samples and judged on the held-out ones, as bias correction. ``judge``: the :class:`Judge`
    class that scores the sims (a test passes one that counts the runs). ``amp``: a budget; mixed
    precision is searched after equalization, before AdaRound (aimetcli/ptq_amp.py).
    ``equalize_model``: True tries equalization whatever the weights' granularity, False never;
    None: unless `ptq_candidates.why_not_equalized` on the configuration chosen before it.
    """
    model = as_model(model, float32=True)
    calib = as_dataset(calib, model)
    evaluation = as_dataset(evaluation, model) if evaluation is not None else None
    options = options or QuantOptions()
    run = run or RunOptions()
    batch_size, progress = run.batch_size, run.progress
    require_float_model(model)
    check_patterns(model, options)  # an --exclude or --bits pattern that names nothing: refused before any run
    if options.target != "generic":  # bitwidths --target cannot run: refused before any run (placement checks)
        place_quantizers(model, options.config, options)
    if amp is not None:
        from aimetcli.ptq_amp import amp_opset, amp_stage, check_amp

        check_amp(amp, options, evaluation is not None and evaluation.labels is not None)
    # every sim needs this opset: raised once here, not once per candidate (the version converter
    # serializes the whole graph each time)
    model = upgrade_opset(model, sim_opset(options) if amp is None else amp_opset(amp, options))
    schemes = tuple(dict.fromkeys(schemes)) or (options.scheme,)
    why_not_pc = per_channel_candidate(options) if per_channel is None else (
        None if per_channel else "not asked")
    flow = _Flow(model, calib, evaluation, options, batch_size=batch_size,
                 on_stage=on_stage, on_start=on_start, progress=progress, judge=judge)

    # the rewrites do not depend on the quantization options: once
    t = time.perf_counter()
    flow.start("fold-bn: folding and calibrating")
    _, fold_summary = fold_bn(model)
    current = model
    opts = dataclasses.replace(options, scheme=schemes[0])
    folded_runs = SharedObservations.for_schemes(schemes)  # the folded model's runs over the data
    kept = folded_runs.keep(calib, Judge.tensors(flow.fp32))  # its histogram run keeps FP32's outputs
    best = flow.simulate(current, opts, "fold-bn", folded_runs)
    t += flow.make_judge(kept)
    as_quantsim = "as quantsim" if options.per_channel is not None or why_not_pc else "as quantsim's default"
    affine = f", {len(fold_summary.affine_folded)} bias Add/Mul folded" if fold_summary.affine_folded else ""
    flow.row("fold-bn", t, best, f"{_describe(opts)} ({as_quantsim}); {len(fold_summary.folded)} BN folded, "
             f"{len(fold_summary.skipped)} left{affine}", None)
    tried = [{"scheme": opts.scheme.value, "per_channel": opts.per_channel,
              "calib_sqnr_db": flow.judge.sqnr(best.model)}]

    def try_config(name: str, candidate_opts, choice: str) -> None:
        nonlocal best, opts
        t0 = time.perf_counter()
        flow.start(f"{name}: calibrating {_describe(candidate_opts)}")
        candidate = flow.simulate(current, candidate_opts, name, folded_runs)
        finer = candidate_opts.per_channel and not opts.per_channel  # per-tensor -> per-channel: ties go to it
        verdict = flow.verdict(granularity_verdict if finer else keep_verdict, best, candidate)
        tried.append({"scheme": candidate_opts.scheme.value, "per_channel": candidate_opts.per_channel,
                      "calib_sqnr_db": verdict.sqnr_after_db})
        flow.decide(choice, verdict, f"{name} closer to FP32 on the calibration samples",
                    f"{_describe(opts)} kept: {name} not better by the margin")
        flow.row(name, t0, candidate, verdict.gain_note(), verdict.kept, verdict)
        if verdict.kept:
            best, opts = candidate, candidate_opts

    if why_not_pc is None:
        try_config("per-channel", dataclasses.replace(opts, per_channel=True), "per-channel weights")
    else:
        flow.decisions.append(Decision("per-channel weights", None, f"not a candidate: {why_not_pc}"))
        flow.row("per-channel", time.perf_counter(), None, f"not tried: {why_not_pc}", None)
    for scheme in schemes[1:]:
        try_config(scheme.value, dataclasses.replace(opts, scheme=scheme), f"{scheme.value} ranges")
        if why_not_pc is None and not opts.per_channel:  # the corner not tried: the two interact
            try_config(f"per-channel, {scheme.value}", dataclasses.replace(opts, scheme=scheme, per_channel=True),
                       "per-channel weights")

    if equalize_model is None:  # by default: a row and a decision say why not (--no-equalize: neither)
        why_no_equalize = why_not_equalized(opts)
        equalize_model = why_no_equalize is None
        if why_no_equalize is not None:
            flow.decisions.append(Decision("equalization", None, f"not tried: {why_no_equalize}"))
            flow.row("+ equalize", time.perf_counter(), None, f"not tried: {why_no_equalize}", None)
    if equalize_model:
        current, best, opts = _equalize_stage(flow, current, best, opts, schemes, tried, folded_runs)
    if adaround is None:
        adaround = adaround_by_default(options)
    if amp is not None:
        best, opts = amp_stage(flow, current, best, opts, amp, schemes)
    if adaround:
        current, best = _adaround_stage(flow, current, best, opts)
    else:
        flow.decisions.append(Decision("adaround", None, f"not tried: {why_no_adaround(options)}"))
    if correct_bias:
        current, best = _bias_stage(flow, current, best, opts, method)

    t = time.perf_counter()
    flow.row("sim.onnx", t, best, f"the model exported: {flow.source_of(best)}", None)
    summary = _export(flow, best, opts, outdir, encoding_version, tried, len(schemes) > 1)
    summary.model = current
    if measure_layers:
        flow.start("report: per-layer error of the final sim")
        summary.layer_errors = layer_errors(current, best.model, flow.held, batch_size=batch_size)
    return summary


def _equalize_stage(flow: _Flow, current: ir.Model, best: _Sim, opts, schemes: tuple,
                    tried: list[dict], current_runs: SharedObservations) -> tuple[ir.Model, _Sim, Any]:
    """Equalize a copy of ``current`` and calibrate it with each range scheme in ``schemes``
    (equalization changes what the ranges see: after fold-bn alone the schemes ranked the other
    way than after the whole flow in 4 of 16 sample-model cases, docs/design.md), or, with
    per-channel weights, with the incumbent's scheme alone (the other scheme's equalized sim was
    never kept there: 0 of 25 cases, docs/design.md); the better equalized sim is kept when it
    beats ``best`` by the margin. (model, sim, options) go on. When
    equalize found nothing to change, no sim is built: the row says so. Tensors it left equal keep
    their observations in ``current_runs`` (no run over them again)."""
    t = time.perf_counter()
    flow.start("+ equalize: equalizing and calibrating")
    equalized = clone(current)
    eq = equalize(equalized)
    if not eq.scaling_sets and not eq.relu6_replaced and not eq.bias_absorbed:
        flow.decisions.append(Decision("equalization", None, "nothing to equalize (no scaling set)"))
        flow.row("+ equalize", t, None, "nothing to equalize: no scaling set", None)
        return current, best, opts
    variants = []  # (row name, options, sim, start time)
    changed = eq.changed
    # per-channel weights: the incumbent's scheme only (the other never won there, docs/design.md)
    tried_schemes = (opts.scheme,) if opts.per_channel else \
        (opts.scheme, *(sc for sc in schemes if sc is not opts.scheme))
    min_max_only = tried_schemes == (QuantScheme.MIN_MAX,)
    equalized_runs = current_runs.inherit(lambda name: name not in changed, min_max_only=min_max_only) \
        if changed is not None else SharedObservations.for_schemes(tried_schemes)
    for scheme in tried_schemes:
        name = "+ equalize" if scheme is opts.scheme else f"+ equalize, {scheme.value}"
        start = t if scheme is opts.scheme else time.perf_counter()
        o = dataclasses.replace(opts, scheme=scheme)
        variants.append((name, o, flow.simulate(equalized, o, name, equalized_runs), start))
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


def _adaround_stage(flow: _Flow, current: ir.Model, best: _Sim, opts) -> tuple[ir.Model, _Sim]:
    """AdaRound a copy of ``current`` on the fit samples; kept when its sim beats ``best`` on the
    held-out samples (the rounding is fitted to data, as bias correction's means are)."""
    from aimetcli.steps.adaround import adaround

    t = time.perf_counter()
    flow.start(f"+ adaround: learning the rounding on {flow.fit.num_samples} samples")
    rounded = clone(current)
    result = adaround(rounded, flow.fit, opts, RunOptions(flow.batch_size))
    flow.start("+ adaround: calibrating the rounded model")
    sim = flow.simulate(rounded, opts, "+ adaround")
    return _technique(flow, "+ adaround", "adaround", keep_verdict, t,
                      f"{len(result.layers)} layers, {result.iterations} iterations", (current, best),
                      (rounded, sim), "goes on", "is used", held_out=True)


def _bias_stage(flow: _Flow, current: ir.Model, best: _Sim, opts, method: str) -> tuple[ir.Model, _Sim]:
    """Bias-correct a copy of ``current`` on the fit samples; kept when its sim beats ``best``. Its
    sim takes the better on the held-out samples of two sets of activation grids: the incumbent's
    (the uncorrected FP32 model's ranges; no calibration run) and its own (quantsim calibrates the
    corrected model, as AIMET does), unless the first is so far below the margin that recalibrating
    cannot reach it (RECALIBRATION_REACH_DB) or the biases moved too little to move the grids
    (`ptq_candidates.why_not_recalibrated`). Neither wins everywhere (docs/design.md)."""
    t = time.perf_counter()
    flow.start(f"+ bias-correct: {method} correction on {flow.fit.num_samples} samples")
    corrected = clone(current)
    # best (quantsim's sim of current) lends its activation grids (bias_correction._simulation; not with mse)
    grids = {**dict.fromkeys(best.dropped), **best.encodings.activations} \
        if opts.weight_range is WeightRange.MIN_MAX else None
    bc = bias_correct(corrected, flow.fit, opts, RunOptions(flow.batch_size), method=method,
                      activation_grids=grids)
    detail = f"{len(bc.corrected)} layers, {method}"
    variants = []  # (row name, sim, start time)
    if best.runs is not None:  # the incumbent's observations give its grids again, without a run
        name = "+ bias-correct, kept grids"
        variants.append((name, flow.simulate(corrected, opts, name, best.runs.inherit(lambda _: True)), t))
    held = flow.held_judge
    before = held.score(best.model)
    after = held.score(variants[0][1].model) if variants else None
    reach = None if after is None or before.sqnr_db is None or after.sqnr_db is None else \
        after.sqnr_db - before.sqnr_db + RECALIBRATION_REACH_DB - held.margin(before, after)
    skip = None if reach is None or reach > 0 else (
        f"{RECALIBRATION_REACH_DB - reach:.1f} dB under the margin on the kept grids, beyond the "
        f"{RECALIBRATION_REACH_DB:g} dB recalibrating has moved a gain")
    if skip is None and variants:
        moves = bias_moves_in_steps(current, corrected, (c.layer for c in bc.corrected), best.encodings.activations)
        skip, median = why_not_recalibrated(moves), median_move(moves)
        detail += f"; biases moved a median {median:.2f} steps of their grids" if median is not None and not skip else ""
    if skip is None:
        flow.start("+ bias-correct: calibrating the corrected model")
        start = time.perf_counter() if variants else t
        # only the biases moved (not with mse, whose weights move onto their grids): the tensors no
        # corrected layer reaches keep their FP32 values, and their observations
        reached = g.downstream_of(corrected, (c.layer for c in bc.corrected)) \
            if best.runs is not None and opts.weight_range is WeightRange.MIN_MAX else None
        # the corrected model's sim is a min-max one when the flow chose min-max: reductions, no histograms
        shared = best.runs.inherit(lambda name: name not in reached, min_max_only=opts.scheme is QuantScheme.MIN_MAX) \
            if reached is not None else None
        variants.insert(0, ("+ bias-correct", flow.simulate(corrected, opts, "+ bias-correct", shared), start))
    else:
        detail += f"; not recalibrated: {skip}"
    chosen = max(variants, key=lambda v: float("-inf") if (db := held.sqnr(v[1].model)) is None else db)
    going_on = (current, best)
    for name, sim, start in variants:  # the rows: the recalibrated sim's first
        if sim is not chosen[1]:
            mine, theirs = held.sqnr(sim.model), held.sqnr(chosen[1].model)
            where = "below" if mine is None or theirs is None or round(mine, 2) < round(theirs, 2) else "not above"
            flow.row(name, start, sim, f"{detail}; held-out SQNR {_db(mine)} {where} the {chosen[0]} "
                                       f"row's {_db(theirs)}", False, calibration=False)
            continue
        going_on = _technique(flow, name, "bias correction", bias_correction_verdict, start, detail,
                              (current, best), (corrected, sim), "is exported", "is exported", held_out=True)
    return going_on


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} dB"


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
    flow.row(row, t, with_it[1], f"{detail}; {verdict.gain_note()}", verdict.kept, verdict,
             calibration=verdict.kept or not held_out)
    if verdict.kept:
        return with_it
    flow.warnings.append(f"{choice} did not clear the margin ({verdict.describe()}); the model "
                         f"without it {warned}")
    return without


# Below it the exported model's output noise is over a tenth of its signal: ptq says where to look
# (a wheel's MiniLM kept 3 dB at W8A8 and 50 dB with 16-bit activations, and nothing said so).
LOW_SQNR_DB = 10.0


def _export(flow: _Flow, final: _Sim, opts, outdir: str, encoding_version: str, tried: list[dict],
            several: bool) -> PtqSummary:
    """Write what export writes, sim.onnx, and ptq's decisions into report.json; score model_qdq."""
    from aimetcli.export import export as export_model

    t = time.perf_counter()
    flow.start("export: writing and scoring model_qdq.onnx")
    exported = export_model(final.model, outdir, version=encoding_version, target=opts.target)
    flow.warnings.extend(w for w in exported.warnings if w not in flow.warnings)
    model_io.save_model(final.model, os.path.join(outdir, "sim.onnx"))
    # a deployed judge's scores of the sim are model_qdq.onnx's (it scores a sim as its deployable
    # model, the same integers, under runtime.ADVISED; tests/test_export.py checks the file against
    # them), so the file is not run again: the chosen sim's scores are cached. A judge of the float
    # emulation (--target htp) leaves the file to be run as onnxruntime deploys it.
    scored = final.model if flow.judge.deployed else model_io.load_model(os.path.join(outdir, "model_qdq.onnx")).model
    level = None if flow.judge.deployed else "advised"
    held = flow.judge.score(scored, optimization=level)
    shown = flow.scorer.score(scored, optimization=level) if flow.scorer is not None else held
    if held.sqnr_db is not None and held.sqnr_db < LOW_SQNR_DB and flow.mixed is None:
        flow.warnings.append(f"model_qdq.onnx keeps {held.sqnr_db:.1f} dB of output SQNR against FP32 on the "
                             "calibration samples: `aimetcli analyze` lists the quantizers that lose it; keep "
                             "them at 16 bits with --bits PATTERN=a16, or let ptq pick them with --min-sqnr DB")
    flow.add(Stage("export: model_qdq", shown.top1, shown.sqnr_db if flow.scorer is not None else None,
                   time.perf_counter() - t, "onnxruntime integer kernels" + "".join(  # the options the judge ran with
                       f", {key}={value} (warning below)" for key, value in exported.session_options.items()),
                   None, held.sqnr_db, flow.data_label))
    record = used_options(opts, final.encodings)
    files = sorted({*exported.files, "sim.onnx"})
    deploy = (f"deploy: {os.path.join(outdir, 'model_qdq.onnx')} (onnxruntime) or {os.path.join(outdir, 'model.onnx')}"
              f" + {os.path.join(outdir, 'model.encodings')} (QNN/SNPE)")
    calibration = {"samples": flow.calib.num_samples, "fit_samples": flow.fit.num_samples,
                   "held_out_samples": flow.held.num_samples if flow.split else 0,
                   "margin_db": MARGIN_DB}
    summary = PtqSummary(flow.stages, record, exported, flow.warnings, tried if several or len(tried) > 1 else [],
                         flow.decisions, calibration, files, deploy,
                         evaluation_seconds=flow.scorer.seconds if flow.scorer is not None else 0.0,
                         mixed_precision=flow.mixed)
    add_to_report(outdir, summary)
    return summary
