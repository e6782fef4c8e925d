"""Mixed precision under an accuracy budget, as AIMET's AMP searches it (ptq's ``--max-drop`` /
``--min-sqnr``).

1. Groups and candidates (``aimetcli/amp/groups.py``): a layer's weight with its output
   activation, every other activation alone; candidates cheapest first (the base bitwidths),
   float last. The budget's metric: with ``--max-drop``, top-1 on the labelled evaluation data
   (the data AIMET's eval callback would score), else the output SQNR against FP32 on the
   evaluation data too (the calibration data without ``--eval``); both read the tensor ptq's
   judge reads (a Softmax's logits).
2. One switchable sim (``aimetcli/amp/switch.py``) and one onnxruntime session: a configuration
   is a set of feeds.
3. The all-highest configuration must meet the budget (else the budget is out of reach: an
   error with the best number reached); when the all-base configuration meets it, it is taken.
4. Phase 1: each group at each of its candidates but the highest, every other group at its
   highest: the error it adds (output SQNR on the first PHASE1_SAMPLES samples of the budget's
   data) and the bit-operations it saves.
5. Phase 2 (``aimetcli/kernels/amp_search.py``): the greedy walk from the all-highest
   configuration down the front, smallest error per bit-operation saved first; the last point
   that meets the budget is found by bisection, and a few more points are scored for the curve.
   The cheapest scored point that meets the budget is chosen.

The result names the chosen bitwidths as ``--bits`` rules and the float groups as ``--exclude``
patterns, which ptq applies to the rest of its flow (its stages and export place quantizers
from them).
"""

from __future__ import annotations

import dataclasses
import glob
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from aimetcli.calibration.samples import SamplesFirst
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.amp_search import (Entry, default_candidates, last_meeting, least_loss_first, noise_ratio, refine,
                                         step_back, walk)
from aimetcli.model_ops import clone, upgrade_opset
from aimetcli.options import AmpCost, AmpOptions, QuantOptions, RunOptions
from aimetcli.quantsim.per_layer import BitsRule
from aimetcli.steps.evaluate import _joined, correct, percent

CURVE_POINTS = 12  # points of the Pareto curve scored besides the bisection's, evenly along the walk
# Phase 1 ranks the groups on the first samples of the budget's data (AIMET's AMP takes a separate,
# smaller phase-1 eval callback for the same reason); phase 2 checks the budget on all of them.
PHASE1_SAMPLES = 256


class BudgetOutOfReach(AimetCliError):
    """Even every group at its highest candidate misses the budget: ``best`` is the value reached."""

    def __init__(self, message: str, best: float):
        super().__init__(message, ErrorKind.INPUT)
        self.best = best


@dataclass
class ParetoPoint:
    """A configuration along phase 2's walk: after moving ``group`` to ``candidate``."""

    step: int
    group: str | None
    candidate: str | None
    relative_bitops: float
    weight_bytes: float
    wide_activation_share: float = 0.0  # of the groups' activation quantizers, above the base bitwidth
    top1: float | None = None
    sqnr_db: float | None = None
    meets: bool | None = None  # None: not scored
    # the budget's metric of the deployable model (onnxruntime's integer kernels), where checked
    deployed: float | None = None
    chosen: bool = False
    refined: bool = False  # tried after the walk, from the walk's chosen point (kernels/amp_search.refine)


@dataclass
class GroupResult:
    name: str
    kind: str  # "layer" or "activation"
    weight: str | None
    activation: str | None
    chosen: str
    param_bw: int | None  # the chosen candidate's bitwidths (None: float, or no such tensor)
    act_bw: int | None
    # phase 1: per candidate but the highest, {candidate, top1, sqnr_db, loss, saved_bitops}
    sensitivity: list[dict] = field(default_factory=list)


@dataclass
class AmpResult:
    budget: str
    metric: str  # "top1" or "sqnr_db"
    target: float
    reference: float | None  # FP32's top-1 (max-drop) or None
    candidates: list[str]
    groups: list[GroupResult]
    pareto: list[ParetoPoint]
    chosen_step: int
    chosen_top1: float | None
    chosen_sqnr_db: float | None
    relative_bitops: float
    weight_bytes: float
    base_relative_bitops: float
    base_weight_bytes: float
    # share of the weights' elements at the cheapest weight bitwidth (of FP32 weight bytes)
    lowest_weight_share: float
    # share of the groups' activation quantizers above the base activation bitwidth (float included)
    wide_activation_share: float
    rules: list[str]  # --bits rules and --exclude patterns the choice is applied with
    runs: int
    seconds: dict[str, float] = field(default_factory=dict)
    bits: tuple[BitsRule, ...] = ()
    exclude: tuple[str, ...] = ()
    note: str = ""
    phase1_samples: int = 0  # phase 1 ranks on the first samples of the budget's data
    cost: str = "bitops"  # what the walk saves (options.AmpCost)
    # the chosen configuration rebuilt as a plain sim (ptq_amp.amp_stage), on the same data
    final_top1: float | None = None
    final_sqnr_db: float | None = None

    def apply(self, options: QuantOptions) -> QuantOptions:
        """``options`` with the chosen bitwidths."""
        return dataclasses.replace(options, bits=options.bits + self.bits, exclude=options.exclude + self.exclude)

    def counts(self) -> str:
        """'W4A8 x40, W8A8 x3, float x2' over the groups."""
        seen: dict[str, int] = {}
        for g in self.groups:
            seen[g.chosen] = seen.get(g.chosen, 0) + 1
        return ", ".join(f"{k} x{v}" for k, v in sorted(seen.items(), key=lambda kv: -kv[1]))


class _Scorer:
    """Runs configurations of the switchable sim over the judge's data (or its first ``samples``
    samples): the tensors the judge scores (an output, a Softmax's logits, or a detector head's
    parts), their SQNR against FP32's as the judge weighs them, and top-1 against the labels
    where one tensor is scored."""

    def __init__(self, switchable, session, judge, batch_size: int, samples: int | None = None):
        from aimetcli.ptq_judge import _subset

        self.sim, self.session, self.judge = switchable, session, judge
        names = _scored_names(switchable, judge)
        if not names:
            raise AimetCliError("mixed precision needs a floating-point output (or a Softmax's logits) to score: "
                                "drop --max-drop/--min-sqnr", ErrorKind.UNSUPPORTED)
        self.names, self.first = names, SamplesFirst(switchable.model, names)
        data, self.labels = judge.data, judge.data.labels
        self.rows: slice | None = None
        step = data.fixed_batch or 1
        keep = max(step, (samples or 0) // step * step)
        if samples is not None and judge._per_sample and data.num_samples > keep:
            data, self.rows = _subset(data, 0, keep, "phase 1"), slice(0, keep)
            self.labels = None if self.labels is None else self.labels[:keep]
        self.samples = data.num_samples
        self.batches = list(data.batches(batch_size))
        self.runs = 0

    def score(self, bits: dict[str, int | None]) -> tuple[float | None, float]:
        flags = self.sim.feeds(bits)
        runs = [self.first(self.session.run({**feeds, **flags}, self.names), feeds)
                for feeds in self.batches]
        outs = [_joined([run[i] for run in runs]) for i in range(len(self.names))]
        self.runs += 1
        top1 = percent(correct(outs[0], self.labels)) if len(outs) == 1 else None
        return top1, self.judge.sqnr_of(outs, self.rows)


def _scored_names(switchable, judge) -> list[str]:
    """The switchable sim's names of the tensors ``judge`` scores (ptq_judge.Judge.scored), as
    read after their quantizers (the If cascades' outputs), where a plain sim's judge reads
    them; empty when the judge scores nothing."""
    return [switchable.switched.get(t, t) for t, _ in judge.scored() or []]


def expose_scored(switchable, judge) -> None:
    """Make the tensors ``judge`` scores (a Softmax's logits or a Concat's parts, which no graph
    outputs; or the output) outputs of the switchable sim, as read after their quantizers (the
    If cascades' outputs), where a plain sim's judge reads them."""
    from aimetcli.graph_builder import expose

    names = _scored_names(switchable, judge)  # none: _Scorer names the problem
    missing = [n for n in names if n not in {o.name for o in switchable.model.graph.outputs}]
    if missing:
        switchable.model = expose(switchable.model, missing)


def _encodings(model: ir.Model, calib, opts: QuantOptions, param_bws: set[int], act_bws: set[int],
               batch_size: int):
    """(base Encodings, weight tensor -> bits -> Encoding, activation tensor -> bits -> Encoding):
    the base calibration, every other activation bitwidth calibrated as well (on FP32 weights,
    calibrate.observed_model, from the base's run over the data), every other weight bitwidth from
    the weights."""
    from aimetcli.quantsim.calibrate import calibrate, param_encodings
    from aimetcli.quantsim.observations import SharedObservations
    from aimetcli.quantsim.placement import place_quantizers

    placement = place_quantizers(model, opts.config, opts)
    runs = SharedObservations()  # the bitwidths' calibrations observe the same statistics: one run
    base = calibrate(model, placement, opts, calib, batch_size, None, runs)
    weights = {t: {e.bitwidth: e} for t, e in base.params.items() if e.bitwidth <= 16}
    acts = {t: {e.bitwidth: e} for t, e in base.activations.items()}
    for a in sorted(act_bws - {opts.act_bw}):
        o = dataclasses.replace(opts, act_bw=a)
        other = calibrate(model, place_quantizers(model, o.config, o), o, calib, batch_size, None, runs)
        for t, e in other.activations.items():
            if t in acts:
                acts[t][a] = e
    for p in sorted(param_bws - {opts.param_bw}):
        o = dataclasses.replace(opts, param_bw=p)
        for t, e in param_encodings(model, place_quantizers(model, o.config, o), o).items():
            if t in weights and e.bitwidth == p:
                weights[t][p] = e
    return base, weights, acts


def _available(groups, weights, acts) -> None:
    """Drop the candidates a group's tensors have no grid for (a Concat left float at one
    bitwidth, placement.revise_after_calibration), float kept."""
    for grp in groups:
        grp.candidates = [c for c in grp.candidates if c.is_float or (
            (grp.weight is None or c.param_bw is None or c.param_bw in weights.get(grp.weight, {}))
            and (grp.activation is None or c.act_bw is None or c.act_bw in acts.get(grp.activation, {})))]


def mixed_precision(model: ir.Model, calib, judge, options: QuantOptions, amp: AmpOptions,
                    run: RunOptions | None = None, *, reference_top1: float | None = None,
                    on_start=None, judged_on: str = "evaluation",
                    deployed: Callable[[tuple, tuple], float | None] | None = None) -> AmpResult:
    """The module docstring's search on ``model`` (an FP32 model; left as it is) with the base
    ``options``; grids calibrated on ``calib``; the budget measured by ``judge`` (ptq_judge.Judge
    of the evaluation data with labels for ``amp.max_drop``; for ``amp.min_sqnr`` of the
    evaluation data, or of the calibration data without it: ``judged_on`` names which). Raises
    when even the all-highest configuration misses the budget.

    ``deployed(bits, exclude)``: the budget's metric of the deployable model of a configuration
    (given as :func:`rules`). The search's pick is checked with it, and where it misses the budget
    the search steps back along the configurations it went through
    (:func:`aimetcli.kernels.amp_search.step_back`)."""
    from aimetcli.amp.groups import bits_of, cost, count_macs, find_groups
    from aimetcli.amp.switch import build_switchable
    from aimetcli.quantsim.insert import WIDE_OPSET

    run = run or RunOptions()
    times: dict[str, float] = {}
    t = time.perf_counter()

    def started(what: str) -> None:
        if on_start is not None:
            on_start(f"mixed precision: {what}")

    candidates = tuple(amp.candidates) or default_candidates(options.param_bw, options.act_bw)
    pbws = {c.param_bw for c in candidates if c.param_bw is not None}
    abws = {c.act_bw for c in candidates if c.act_bw is not None}
    work = upgrade_opset(clone(model), WIDE_OPSET)  # 16-bit QuantizeLinear in the switchable sim
    started("calibrating every candidate bitwidth")
    base, weights, acts = _encodings(work, calib, options, pbws, abws, run.batch_size)
    groups, layers = find_groups(work, list(base.activations), list(weights), candidates)
    _available(groups, weights, acts)
    first = next(iter(calib.batches(calib.fixed_batch or 1)))
    count_macs(work, layers, first)
    fixed = {tn: e for tn, e in base.params.items() if tn not in weights}
    switchable = build_switchable(work, groups, weights, acts, fixed)
    times["build"] = time.perf_counter() - t

    t = time.perf_counter()
    started("FP32 and the highest and lowest configurations")
    from aimetcli import runtime

    expose_scored(switchable, judge)
    session = runtime.Session(switchable.model, runtime.SIMULATE)
    scorer = _Scorer(switchable, session, judge, run.batch_size)
    ranker = _Scorer(switchable, session, judge, run.batch_size, PHASE1_SAMPLES)
    by_max_drop = amp.max_drop is not None
    metric = "top1" if by_max_drop else "sqnr_db"
    if by_max_drop:
        if reference_top1 is None:
            raise AimetCliError("--max-drop needs labels: give --eval with --labels, or an SQNR budget with "
                                "--min-sqnr", ErrorKind.USAGE)
        target = reference_top1 - float(amp.max_drop)  # type: ignore[arg-type]
    else:
        target = float(amp.min_sqnr)  # type: ignore[arg-type]
    scores: dict[tuple[int, ...], tuple[float | None, float]] = {}

    def tensor_bits(config: list[int]) -> dict[str, int | None]:
        wbits, abits = bits_of(groups, config)
        return {**wbits, **abits}

    def measure(config: list[int]) -> tuple[float | None, float]:
        key = tuple(config)
        if key not in scores:
            scores[key] = scorer.score(tensor_bits(config))
        return scores[key]

    def saving(config: list[int]) -> float:
        """What ``config`` saves against the all-highest configuration (``amp.cost``): relative
        bit-operations, and a thousandth of the weight bytes saved relative to all-8-bit weights
        (among equal bit-operations, an output feeding no layer, the smaller model first); or
        the share of activations moved below their highest bitwidth, bit-operations and bytes
        breaking ties."""
        c = cost(groups, layers, config)
        bitops = (cost_highest.relative_bitops - c.relative_bitops
                  + 1e-3 * (cost_highest.weight_bytes - c.weight_bytes) / max(1, sum(la.weight_elements for la in layers)))
        if amp.cost is AmpCost.ACTIVATIONS:  # activations moved below their widest, bit-ops then bytes on ties
            return wide_share(groups, highest) - wide_share(groups, config) + 1e-3 * bitops
        return bitops

    def value(score: tuple[float | None, float]) -> float:
        v = score[0] if by_max_drop else score[1]
        return float("-inf") if v is None else v

    def meets(config: list[int]) -> bool:
        return value(measure(config)) >= target - 1e-9

    highest = [len(g.candidates) - 1 for g in groups]
    lowest = [0] * len(groups)
    if not meets(highest):
        best = value(measure(highest))
        what = (f"top-1 {best:.2f}% against a target of {target:.2f}% (FP32 {reference_top1:.2f}% less "
                f"{amp.max_drop:g})" if by_max_drop else f"an output SQNR of {best:.1f} dB against {target:g} dB")
        raise BudgetOutOfReach(f"the budget is out of reach: every group at its highest candidate "
                               f"({candidates[-1].label()}) gives {what}; allow a larger drop or add a wider candidate "
                               "(--amp-candidates ... ,float)", best)
    cost_highest = cost(groups, layers, highest)
    entries: list[Entry] = []
    sensitivity: list[list[dict]] = [[] for _ in groups]
    noise_highest = noise_ratio(ranker.score(tensor_bits(highest))[1])
    note = ""
    points: list[tuple[list[int], Entry | None]]
    if meets(lowest):
        points = [(highest, None), (lowest, None)]
        walked = len(points)  # points of the walk; any after them were tried by refine
        chosen = 1
        path = [0, 1]
        note = "The base bitwidths everywhere meet the budget: no search needed"
        times["phase1"] = 0.0
    else:
        started(f"phase 1 over {sum(len(g.candidates) - 1 for g in groups)} group candidates")
        for gi, grp in enumerate(groups):
            for ci, cand in enumerate(grp.candidates[:-1]):
                config = list(highest)
                config[gi] = ci
                top1, db = ranker.score(tensor_bits(config))
                loss = max(0.0, noise_ratio(db) - noise_highest)
                saved = saving(config)
                entries.append(Entry(gi, ci, loss, saved))
                sensitivity[gi].append({"candidate": cand.label(), "top1": top1, "sqnr_db": db, "loss": loss,
                                        "saved_bitops": saved})
        times["phase1"] = time.perf_counter() - t
        t = time.perf_counter()
        started("phase 2: walking the Pareto front")
        points = walk(highest, entries)
        chosen = last_meeting(len(points), lambda i: meets(points[i][0]))
        for i in np.linspace(0, len(points) - 1, min(CURVE_POINTS, len(points))).round().astype(int):
            measure(points[int(i)][0])
        met = [i for i, (c, _) in enumerate(points) if tuple(c) in scores and meets(c)]
        chosen = max([chosen, *met])
        walked = len(points)
        path = list(range(chosen + 1))
        if chosen >= 0:
            started(f"phase 2: trying the {len(points) - 1 - chosen} steps after the walk's choice one at a time")
            moves = least_loss_first([e for _, e in points[chosen + 1:] if e])
            for trial, move, kept in refine(points[chosen][0], moves, meets):
                points.append((trial, move))
                chosen = len(points) - 1 if kept else chosen
                path += [chosen] if kept else []
    times["phase2"] = time.perf_counter() - t
    checked: dict[int, float | None] = {}
    stepped = ""
    if deployed is not None and chosen >= 0:
        t = time.perf_counter()
        started("checking the pick as deployed (onnxruntime's integer kernels)")

        def deploy_meets(k: int) -> bool:
            i = path[k]
            if i not in checked:
                checked[i] = deployed(*rules(groups, points[i][0]))
            v = checked[i]
            return v is not None and v >= target - 1e-9

        k = step_back(len(path), deploy_meets)
        if k != len(path) - 1:
            back = len(path) - 1 - max(k, 0)
            stepped = (f"The search's pick, deployed, missed the budget: stepped back {back} of its "
                       f"{len(path) - 1} moves" + ("" if k >= 0 else ", to every group at its highest candidate, "
                                                   "which misses it deployed too"))
        chosen = path[max(k, 0)]
        times["deploy"] = time.perf_counter() - t

    pareto = []
    for i, (config, entry) in enumerate(points):
        c = cost(groups, layers, config)
        p = ParetoPoint(i, groups[entry.group].name if entry else None,
                        groups[entry.group].candidates[entry.candidate].label() if entry else None,
                        c.relative_bitops, c.weight_bytes, wide_share(groups, config))
        if tuple(config) in scores:
            p.top1, p.sqnr_db = scores[tuple(config)]
            p.meets = meets(config)
        p.deployed = checked.get(i)
        p.chosen = i == chosen
        p.refined = i >= walked
        pareto.append(p)
    if note:
        pareto[0].candidate, pareto[1].candidate = "all highest", "all base"
    config = points[chosen][0]
    note = ". ".join(n for n in (note, stepped) if n)
    result = _result(amp.describe(judged_on), metric, target, reference_top1, candidates, groups, layers, config,
                     pareto, chosen, sensitivity, scorer.runs + ranker.runs, times, note, ranker.samples)
    result.cost = amp.cost.value
    return result


def wide_share(groups, config: list[int]) -> float:
    """The share of the groups' activation quantizers that ``config`` puts above their base (the
    cheapest candidate's) bitwidth, float included."""
    acts = [(g.candidates[i].act_bw, g.candidates[0].act_bw) for g, i in zip(groups, config) if g.activation]
    return sum(1 for a, b in acts if a is None or (b is not None and a > b)) / len(acts) if acts else 0.0


def _result(budget: str, metric: str, target: float, reference_top1, candidates, groups, layers,
            config: list[int], pareto: list[ParetoPoint], chosen: int, sensitivity, runs: int,
            times: dict[str, float], note: str, phase1_samples: int) -> AmpResult:
    from aimetcli.amp.groups import cost

    base = cost(groups, layers, [0] * len(groups))
    final = cost(groups, layers, config)
    low = min((c.param_bw for c in candidates if c.param_bw is not None), default=None)
    wbits = {g.weight: g.candidates[i].param_bw for g, i in zip(groups, config) if g.weight is not None}
    total = sum(la.weight_elements for la in layers)
    at_low = sum(la.weight_elements for la in layers if low is not None and wbits.get(la.weight) == low)
    results = []
    for grp, i, sens in zip(groups, config, sensitivity):
        c = grp.candidates[i]
        results.append(GroupResult(grp.name, grp.kind, grp.weight, grp.activation, c.label(),
                                   c.param_bw if grp.weight else None, c.act_bw if grp.activation else None, sens))
    bits, exclude = rules(groups, config)
    point = pareto[chosen]
    return AmpResult(budget, metric, target, reference_top1, [c.label() for c in candidates], results,
                     pareto, chosen, point.top1, point.sqnr_db, final.relative_bitops, final.weight_bytes,
                     base.relative_bitops, base.weight_bytes, at_low / total if total else 0.0,
                     point.wide_activation_share,
                     [f"--bits {r.pattern}={r.spec()}" for r in bits] + [f"--exclude {p}" for p in exclude], runs,
                     times, tuple(bits), tuple(exclude), note, phase1_samples=phase1_samples)


def rules(groups, config: list[int]) -> tuple[tuple[BitsRule, ...], tuple[str, ...]]:
    """The ``--bits`` rules and ``--exclude`` patterns that give ``config`` over the base options."""
    bits: list[BitsRule] = []
    exclude: list[str] = []
    for grp, i in zip(groups, config):
        c, b = grp.candidates[i], grp.candidates[0]
        for tensor, want, base_bw, kind in ((grp.weight, c.param_bw, b.param_bw, "w"),
                                            (grp.activation, c.act_bw, b.act_bw, "a")):
            if tensor is None:
                continue
            pattern = glob.escape(tensor)
            if c.is_float:
                exclude.append(pattern)
            elif want is not None and want != base_bw:
                bits.append(BitsRule(pattern, want if kind == "w" else None, want if kind == "a" else None))
    return tuple(bits), tuple(exclude)


def describe(result: Any) -> str:
    """The ptq row's note for a result."""
    share = (f"{100 * result.lowest_weight_share:.0f}% of weights at the lowest bitwidth, "
             f"{100 * result.wide_activation_share:.0f}% of activations above the base bitwidth")
    return (f"{result.counts()}; {result.relative_bitops:.2f}x bit-ops (base {result.base_relative_bitops:.2f}x), "
            f"{result.weight_bytes / 1e3:.1f} kB weights, {share}; {result.runs} runs")
