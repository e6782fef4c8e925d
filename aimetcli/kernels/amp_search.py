"""Phase 2 of mixed precision: the greedy walk down the Pareto front, on numbers only.

Phase 1 measured, for each group ``g`` and each of its candidates ``c`` but the highest, the
scored output with ``g`` at ``c`` and every other group at its highest candidate: the error it
adds, ``loss[g, c] = N(g at c) - N(all highest)`` with ``N = 10^(-SQNR/10)`` the output's noise
energy relative to its signal (error energies of independent sources add, so these losses sum
to a first approximation), and the cost it saves, ``saved[g, c]`` relative bit-operations.

Phase 2 walks from the all-highest configuration, one group one candidate down per step, the
steps sorted by loss per bit-operation saved, smallest first. A step's ratio is taken from the
group's previous candidate, over the candidates on the group's lower convex hull of (saved,
loss) (the greedy of the multiple-choice knapsack's linear relaxation). AIMET's phase 2 sorts
its entries by their accuracy alone, each measured against the highest candidate, so a group's
W4 entry also carries the loss of its W8 step; ranking those entries by loss per saving, as a
first version here did, saved 77% of the brute-force optimum in the worst of 20 random additive
tables (four groups, three candidates), the hull's steps 90% (tests/test_amp.py).
Each step is a point of the Pareto curve, its cost falling along the walk. The budget is checked on the real metric
at some points: :func:`last_meeting` bisects for the last point that meets it, assuming the
metric falls along the walk, as AIMET's phase 2 does. The walk's order comes from phase 1's
losses, each measured with every other group at its highest candidate; where one step's real
loss is far above its estimate (an activation that matters once its neighbours are coarse), the
walk misses the budget there and every cheaper step after it is lost. :func:`refine` then tries
those steps one at a time from the chosen point, each kept where the budget still holds
(measured, not estimated): a greedy pass with rejection, not part of AIMET's AMP.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from aimetcli.errors import AimetCliError, ErrorKind


@dataclass(frozen=True)
class Candidate:
    """A bitwidth pair for a group; both None: float (no quantizer)."""

    param_bw: int | None
    act_bw: int | None

    @property
    def is_float(self) -> bool:
        return self.param_bw is None and self.act_bw is None

    def label(self) -> str:
        if self.is_float:
            return "float"
        return (f"W{self.param_bw}" if self.param_bw else "") + (f"A{self.act_bw}" if self.act_bw else "")

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """``w4a8``, ``w8a16`` or ``float``."""
        t = text.strip().lower()
        if t in ("float", "fp32"):
            return cls(None, None)
        m = re.fullmatch(r"w(\d+)a(\d+)", t)
        if m is None or not all(2 <= int(b) <= 16 for b in m.groups()):
            raise AimetCliError(f"--amp-candidates {text!r}: give candidates like w4a8, w8a16 or float "
                                "(bitwidths 2 to 16)", ErrorKind.USAGE)
        return cls(int(m.group(1)), int(m.group(2)))


def default_candidates(param_bw: int, act_bw: int) -> tuple[Candidate, ...]:
    """The base bitwidths (the cheapest candidate), W8A8 and W8A16 where they are wider than the
    base, and float."""
    base = Candidate(param_bw, act_bw)
    wider = [c for c in (Candidate(8, 8), Candidate(8, 16))
             if c != base and (c.param_bw or 0) >= param_bw and (c.act_bw or 0) >= act_bw]
    return (base, *wider, Candidate(None, None))


def ordered(candidates) -> list[Candidate]:
    """Cheapest first (weight bits x activation bits, then weight bits), float last, no repeats."""
    return sorted(dict.fromkeys(candidates),
                  key=lambda c: (c.is_float, (c.param_bw or 0) * (c.act_bw or 0), c.param_bw or 0, c.act_bw or 0))


@dataclass(frozen=True)
class Entry:
    """Phase 1's measurement of group ``group`` at its candidate ``candidate`` (an index into the
    group's candidates, cheapest first)."""

    group: int
    candidate: int
    loss: float
    saved: float


def noise_ratio(sqnr_db: float | None) -> float:
    """Noise energy relative to the signal's for an SQNR in dB (inf dB: 0)."""
    if sqnr_db is None:
        return math.inf
    return 10.0 ** (-sqnr_db / 10.0)


def _hull(entries: list[Entry]) -> list[Entry]:
    """One group's candidates on the lower convex hull of (saved, loss) that starts at its highest
    candidate, (0, 0), by increasing saving. The others are dominated (another saves as much for
    less loss) or beaten by a mix of their neighbours; the walk passes over them."""
    kept: list[Entry] = []
    for e in sorted((e for e in entries if e.saved > 0), key=lambda e: (-e.saved, e.loss)):
        if not kept or e.loss < kept[-1].loss:  # saves less: only worth it for less loss
            kept.append(e)
    hull: list[tuple[float, float, Entry | None]] = [(0.0, 0.0, None)]
    for e in reversed(kept):
        while len(hull) >= 2:
            (s0, l0, _), (s1, l1, _) = hull[-2], hull[-1]
            if (l1 - l0) * (e.saved - s0) >= (e.loss - l0) * (s1 - s0):
                hull.pop()  # reached at no more loss per saving straight from the point before
            else:
                break
        hull.append((e.saved, e.loss, e))
    return [e for _, _, e in hull if e is not None]


def order(entries: list[Entry]) -> list[tuple[Entry, float]]:
    """Phase 2's steps (module docstring): per group the candidates on its hull, each with the
    loss per saving of the step from the group's previous one, all sorted by that ratio (ties:
    less loss, model order); then the candidates that save nothing, by loss."""
    steps: list[tuple[Entry, float]] = []
    rest: list[Entry] = []
    by_group: dict[int, list[Entry]] = {}
    for e in entries:
        by_group.setdefault(e.group, []).append(e)
    for own in by_group.values():
        saved = loss = 0.0
        for e in _hull(own):
            steps.append((e, (e.loss - loss) / (e.saved - saved)))
            saved, loss = e.saved, e.loss
        rest += [e for e in own if e.saved <= 0]
    steps.sort(key=lambda st: (st[1], st[0].loss, st[0].group, -st[0].candidate))
    return steps + [(e, math.inf) for e in sorted(rest, key=lambda e: (e.loss, e.group, -e.candidate))]


def walk(start: list[int], entries: list[Entry]) -> list[tuple[list[int], Entry | None]]:
    """The configurations along the walk: ``start`` (each group's highest candidate), then one
    per step of :func:`order` that moves its group to a cheaper candidate, each with the entry
    that made it."""
    config = list(start)
    points: list[tuple[list[int], Entry | None]] = [(list(config), None)]
    for e, _ in order(entries):
        if e.candidate < config[e.group]:
            config[e.group] = e.candidate
            points.append((list(config), e))
    return points


def last_meeting(count: int, meets: Callable[[int], bool]) -> int:
    """The largest ``i`` in ``[0, count)`` with ``meets(i)``, by bisection (``meets`` assumed
    true up to some point and false after it); -1 when ``meets(0)`` is false. ``meets`` is
    called about log2(count) times."""
    if count == 0 or not meets(0):
        return -1
    lo, hi = 0, count - 1  # meets(lo) holds
    if meets(hi):
        return hi
    return _bisect(lo, hi, meets)


def _bisect(met: int, missed: int, meets: Callable[[int], bool]) -> int:
    """The last index that meets between ``met`` (meets) and ``missed`` (does not), by bisection."""
    while missed - met > 1:
        mid = (met + missed) // 2
        if meets(mid):
            met = mid
        else:
            missed = mid
    return met


def step_back(count: int, meets: Callable[[int], bool]) -> int:
    """The last ``k`` in ``[0, count)`` with ``meets(k)``, looked for from the end: ``count - 1``
    first, then 1, 3, 7, 15, ... steps back from it (the stride doubling) until one meets, then
    by bisection between the last that missed and the first that met (``meets`` assumed true up
    to some point and false after it); -1 when none meets. A pick that meets costs one call; one
    k steps past the last that meets, about 2 log2(k). (The search's moves change the output by
    hundredths of a dB: the sim and the deployed model differ by a few of them, PP-OCRv5's
    detector by 0.15 dB.)"""
    if count == 0:
        return -1
    missed, step = count - 1, 1
    if meets(missed):
        return missed
    while True:
        if missed == 0:
            return -1
        k = max(missed - step, 0)
        if meets(k):
            break
        missed, step = k, step * 2
    return _bisect(k, missed, meets)  # meets(k), not meets(missed), k < missed


def least_loss_first(moves: list[Entry]) -> list[Entry]:
    """The order :func:`refine` tries the walk's steps past its choice in: least phase-1 loss
    first, the walk's order on ties. The walk orders by loss per bit-operation saved; past its
    choice the budget is nearly spent, and what is left to gain is how many more groups fit in
    it, so the steps that cost least error go first (the greedy order of a knapsack by count)."""
    return sorted(moves, key=lambda e: e.loss)  # stable: the walk's order on ties


REFINE_PASSES = 3  # passes of :func:`refine` over the moves not kept, while a pass keeps one


def refine(start: list[int], moves: list[Entry], meets: Callable[[list[int]], bool],
           passes: int = REFINE_PASSES) -> list[tuple[list[int], Entry, bool]]:
    """From ``start`` (a configuration that meets the budget), each of ``moves`` in turn (a group
    to a cheaper candidate than it has so far) applied to the configuration kept so far, and kept
    where ``meets`` still holds; then again over the moves not kept, from the configuration kept
    by then, while the pass before kept one (at most ``passes`` passes). Returns every move
    tried: (its configuration, the move, kept); ``meets`` is called once per move tried.

    Why more than one pass: the measured metric does not fall with every move (on PP-OCRv5's
    detector, session 14, 58 of the 131 moves refine kept raised the output SQNR, by up to
    0.35 dB), so a move that missed the budget by a little may meet it once later moves are made.
    """
    config = list(start)
    tried: list[tuple[list[int], Entry, bool]] = []
    for _ in range(max(1, passes)):
        undone: list[Entry] = []
        kept_any = False
        for e in moves:
            if e.candidate >= config[e.group]:
                continue
            trial = list(config)
            trial[e.group] = e.candidate
            kept = meets(trial)
            tried.append((trial, e, kept))
            if kept:
                config, kept_any = trial, True
            else:
                undone.append(e)
        if not kept_any or not undone:
            break
        moves = undone
    return tried
