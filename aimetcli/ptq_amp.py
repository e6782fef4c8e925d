"""ptq's mixed-precision stage (``--max-drop`` / ``--min-sqnr``): the search of
:mod:`aimetcli.steps.amp` on the model as ptq has it after equalization, then a plain sim with
the chosen bitwidths, which the later stages (AdaRound, bias correction) and export use.

It runs before AdaRound, which freezes each weight on its grid (a W4-rounded weight gains
nothing from an 8-bit grid) and learns each layer's rounding with the layers before it at their
own bitwidths, and before bias correction, whose correction depends on each layer's bitwidth:
both then work on the mixed-precision sim. The search measures without them, so their gains
come on top of a budget already met: a later stage that takes the model under the budget on
the budget's data is not kept (:func:`budget_veto`). Searching after AdaRound instead (the rounded weights at the
base bitwidth, the weights before it elsewhere) was measured and dropped: docs/design.md.
"""

from __future__ import annotations

import dataclasses
import time

from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.options import AmpOptions, QuantOptions, RunOptions


def check_amp(amp: AmpOptions, options: QuantOptions, has_labels: bool) -> None:
    """The usage errors of a budget, before any run."""
    if amp.max_drop is not None and amp.min_sqnr is not None:
        raise AimetCliError("give one budget: --max-drop (top-1 points) or --min-sqnr (dB)", ErrorKind.USAGE)
    if amp.max_drop is not None and not has_labels:
        raise AimetCliError("--max-drop is measured in top-1 points and needs labels (--eval data.npz --labels "
                            "KEY); without labels give an SQNR budget with --min-sqnr DB", ErrorKind.USAGE)
    if amp.max_drop is not None and amp.max_drop < 0:
        raise AimetCliError("--max-drop is a drop in points: give 0 or more", ErrorKind.USAGE)
    if options.bits:
        raise AimetCliError("--bits and a budget both set bitwidths: the search chooses them (give its candidates "
                            "with --amp-candidates), so drop --bits", ErrorKind.USAGE)


def amp_opset(amp: AmpOptions, options: QuantOptions) -> int:
    """The opset every sim of the search and after it needs (21 when a candidate is over 8 bits)."""
    from aimetcli.kernels.amp_search import default_candidates
    from aimetcli.model_ops import sim_opset
    from aimetcli.quantsim.insert import WIDE_OPSET

    candidates = tuple(amp.candidates) or default_candidates(options.param_bw, options.act_bw)
    widest = max(b for c in candidates for b in (c.param_bw, c.act_bw) if b is not None)
    return WIDE_OPSET if widest > 8 else sim_opset(options)


def amp_stage(flow, current, best, opts: QuantOptions, amp: AmpOptions, schemes: tuple = ()):
    """Search, then simulate ``current`` with the chosen bitwidths: (sim, options); the
    AmpResult goes to ``flow.mixed``. ``flow``: ptq's run state (ptq_flow._Flow).

    ``schemes``: the range schemes ptq's flow tried. The flow chose ``opts.scheme`` at the base
    bitwidths, and the widest candidate may want another: tf-enhanced clips weights for 8-bit
    activations, and with 16-bit activations the weights' clipping is most of the error left
    (PP-OCRv6 tiny rec, per-channel W8A16: 19.1 dB with tf-enhanced ranges, 21.5 with min-max).
    Where the budget is out of reach with ``opts.scheme``, the search runs with the first of
    the others that reaches it, and the later stages go on with that scheme."""
    from aimetcli.steps.amp import BudgetOutOfReach, describe, mixed_precision

    t = time.perf_counter()
    # the budget is measured where ptq's table reports its scores: on the --eval data when given
    # (real models' SQNR differs by dB between the two sets: docs/design.md)
    judge = flow.scorer if amp.max_drop is not None else (flow.scorer or flow.judge)
    if amp.max_drop is not None and (judge is None or judge.top1_fp32 is None):
        raise AimetCliError("--max-drop needs labelled evaluation data (--eval with --labels); or give --min-sqnr",
                            ErrorKind.USAGE)
    metric = "top1" if amp.max_drop is not None else "sqnr_db"
    sims: dict[tuple, object] = {}  # the plain sims the deployed check built, by their rules

    def deployed(bits: tuple, exclude: tuple) -> float | None:
        flow.start(f"mixed precision: checking a configuration as deployed ({len(sims) + 1})")
        sim = flow.simulate(current, dataclasses.replace(opts, bits=opts.bits + bits, exclude=opts.exclude + exclude),
                            "+ mixed precision", best.runs)  # the same model state
        sims[(bits, exclude)] = sim
        return deployed_value(judge, metric, sim.model)

    def search(o: QuantOptions):
        nonlocal opts
        opts = o  # the deployed check builds its sims with these
        return mixed_precision(current, flow.calib, judge, o, amp, RunOptions(flow.batch_size),
                               reference_top1=judge.top1_fp32, on_start=flow.start,
                               judged_on=flow.data_label if judge is flow.scorer else "calibration", deployed=deployed)

    first = opts
    try:
        result = search(opts)
    except BudgetOutOfReach as missed:
        result = None
        for scheme in (sc for sc in schemes if sc is not first.scheme):
            flow.start(f"mixed precision: the budget is out of reach with {first.scheme.value} ranges; "
                       f"trying {scheme.value}")
            try:
                result = search(dataclasses.replace(first, scheme=scheme))
            except BudgetOutOfReach:
                continue
            unit = "%" if amp.max_drop is not None else " dB"
            flow.warnings.append(
                f"mixed precision: the budget is out of reach with {first.scheme.value} ranges (every group at its "
                f"highest candidate gives {missed.best:.2f}{unit}); searched with {scheme.value} ranges, which reach "
                "it, and the later stages use them")
            break
        if result is None:
            raise
    mixed = result.apply(opts)
    sim = sims.get((result.bits, result.exclude))
    if sim is None:
        flow.start("mixed precision: calibrating the chosen configuration")
        sim = flow.simulate(current, mixed, "+ mixed precision", best.runs)
    score = judge.score(sim.model)
    value = score.top1 if amp.max_drop is not None else score.sqnr_db
    result.final_top1, result.final_sqnr_db = score.top1, score.sqnr_db
    deployed_at = next((p.deployed for p in result.pareto if p.chosen), None)
    met = deployed_at is not None and deployed_at >= result.target - 1e-9
    unit = "%" if amp.max_drop is not None else " dB"
    if not met:
        flow.warnings.append(
            f"mixed precision: the chosen configuration, deployed, gives {deployed_at}{unit} (its sim {value}{unit}) "
            f"against the target {result.target:.2f}{unit}; no configuration the search went through meets it "
            "deployed. AdaRound and bias correction may recover it")
    flow.note(f"mixed precision ({result.budget})", True,
              f"{result.counts()}; the pick, deployed, scored {'' if met else 'not '}within the budget"
              + (f" ({result.note})" if result.note else ""))
    flow.row("+ mixed precision", t, sim, describe(result), None)
    flow.mixed, flow.budget_judge = result, judge
    return sim, mixed


def deployed_value(judge, metric: str, sim) -> float | None:
    """The budget's ``metric`` ("top1" or "sqnr_db") of the deployable model of the quantsim model
    ``sim`` (model_qdq.onnx, in memory) under onnxruntime's optimizations and the session options
    export names (runtime.ADVISED), scored by ``judge``.
    The budget is checked there, not on the sim: the integer kernels round otherwise (PP-OCRv5's
    detector with 24 of 256 activations at 16 bits: 14.535 dB as a sim, 14.39 dB deployed)."""
    from aimetcli.export import deployable_of_sim

    score = judge.score(deployable_of_sim(sim), optimization="advised")
    return score.top1 if metric == "top1" else score.sqnr_db


def budget_veto(result, judge, incumbent, candidate) -> str:
    """Why a stage after the search is not kept whatever its gain on the calibration samples, or
    "": with it the deployable model misses the budget ``result`` (an AmpResult) on the budget's
    data, scored by ``judge`` (:func:`deployed_value`), and scores there no better than
    ``incumbent`` (the model without it). A gain on the held-out calibration samples can be a
    loss there: bias correction on PP-OCRv5's detector (session 16) cleared its margin by
    +1.29 dB on them and took the evaluation SQNR from 14.53 to 14.29 dB, under the budget of
    14.53 the search had met."""
    def value(sim):
        return deployed_value(judge, result.metric, sim)

    after = value(candidate)
    if after is None or after >= result.target - 1e-9:
        return ""
    before = value(incumbent)
    if before is not None and after > before:
        return ""  # under the budget, but closer to it than without
    unit = "%" if result.metric == "top1" else " dB"
    return f"vetoed: {after:.2f}{unit} with it, under the mixed-precision budget's {result.target:.2f}{unit}"
