"""Mixed precision under a budget (ptq --max-drop / --min-sqnr): phase 2's walk against brute force,
the switchable sim against plain sims, and the CLI."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import main
from aimetcli.kernels.amp_search import Candidate, Entry, last_meeting, walk
from helpers import init, make_model, to_ir
from helpers import rand as _shared_rand

_RNG = np.random.default_rng(19)  # its own: drawing from helpers.RNG would change later modules' data


def rand(*shape, scale=1.0):
    return _shared_rand(*shape, scale=scale, rng=_RNG)


# -- phase 2 on numbers ------------------------------------------------------------------------
def _brute_force(losses, savings, budget):
    """The largest total saving over every configuration whose summed loss stays within ``budget``
    (index 0 of a group: its highest candidate, no loss, no saving)."""
    best = 0.0
    for config in itertools.product(*[range(len(row)) for row in losses]):
        loss = sum(losses[g][c] for g, c in enumerate(config))
        if loss <= budget + 1e-12:
            best = max(best, sum(savings[g][c] for g, c in enumerate(config)))
    return best


def _greedy(losses, savings, budget):
    """Phase 2 over the table: entries for every cheaper candidate, the walk, the last point within
    ``budget`` of summed loss (candidates here are indexed highest = last, as the groups are)."""
    n = len(losses[0])
    entries = [Entry(g, n - 1 - c, losses[g][c], savings[g][c]) for g in range(len(losses)) for c in range(1, n)]
    points = walk([n - 1] * len(losses), entries)

    def total(config, table):
        return sum(table[g][n - 1 - c] for g, c in enumerate(config))

    i = last_meeting(len(points), lambda k: total(points[k][0], losses) <= budget + 1e-12)
    costs = [total(p[0], savings) for p in points]
    assert costs == sorted(costs), "the walk only ever moves a group to a cheaper candidate"
    return total(points[i][0], savings)


def test_phase2_greedy_equals_brute_force_where_the_greedy_is_exact():
    """Groups whose one cheaper candidate saves the same: lowest loss per saving first is optimal
    (an exchange argument), so the walk's pick equals brute force at every budget."""
    rng = np.random.default_rng(3)
    losses = [[0.0, float(x)] for x in rng.uniform(0.01, 1.0, 6)]
    savings = [[0.0, 1.0] for _ in losses]
    for budget in np.linspace(0, sum(r[1] for r in losses), 15):
        assert _greedy(losses, savings, budget) == pytest.approx(_brute_force(losses, savings, budget))


def test_phase2_greedy_on_a_mixed_table_meets_the_budget_and_is_near_the_optimum():
    """Three candidates per group (float, W8, W4: savings 0 < s8 < s4, losses 0 < l8 < l4), losses
    additive: the walk's pick never breaks the budget and saves at least 85% of what the optimum
    saves on these tables (worst 90%; a greedy order is no knapsack solver)."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        l8 = rng.uniform(0.001, 0.2, 4)
        losses = [[0.0, a, a + b] for a, b in zip(l8, rng.uniform(0.05, 1.0, 4))]
        s = rng.uniform(1, 4, 4)
        savings = [[0.0, x, x * 1.5] for x in s]
        budget = float(rng.uniform(0.1, 1.5))
        got = _greedy(losses, savings, budget)
        assert got >= 0.85 * _brute_force(losses, savings, budget) - 1e-9


def test_last_meeting_bisects():
    calls = []
    assert last_meeting(100, lambda i: calls.append(i) or i <= 41) == 41 and len(calls) <= 9
    assert last_meeting(5, lambda i: False) == -1 and last_meeting(5, lambda i: True) == 4


def test_refine_keeps_the_cheap_steps_past_a_step_that_breaks_the_budget():
    """Real losses that do not follow phase 1's estimates: the walk's third step (group 2) costs
    far more than estimated, so the walk stops before it and never reaches groups 3-5. refine
    tries each step after the choice alone: group 2's is undone, the others kept, and the budget
    is measured once per step tried."""
    from aimetcli.kernels.amp_search import refine

    real = [0.1, 0.1, 5.0, 0.2, 0.2, 0.2]  # loss of each group at its cheaper candidate
    entries = [Entry(g, 0, loss=0.1 * (g + 1), saved=1.0) for g in range(6)]  # phase 1's estimates
    budget = 1.0
    calls = []

    def meets(config):
        calls.append(config)
        return sum(real[g] for g, c in enumerate(config) if c == 0) <= budget

    points = walk([1] * 6, entries)
    chosen = last_meeting(len(points), lambda i: meets(points[i][0]))
    assert points[chosen][0] == [0, 0, 1, 1, 1, 1]  # the walk's choice: two groups moved
    calls.clear()
    tried = refine(points[chosen][0], [e for _, e in points[chosen + 1:] if e], meets)
    assert [(e.group, kept) for _, e, kept in tried] == [(2, False), (3, True), (4, True), (5, True), (2, False)]
    assert tried[-2][0] == [0, 0, 1, 0, 0, 0] and meets(tried[-2][0])
    assert len(calls) == len(tried) + 1


def test_refine_in_least_loss_order_fits_more_groups_than_the_walks_order():
    """Past the walk's choice with 0.35 of budget left: in the walk's order (loss per saving) the
    first step, group 0 (loss 0.3, a large saving), takes nearly all of it and the three steps of
    loss 0.1 after it are undone; least loss first keeps those three and undoes group 0's."""
    from aimetcli.kernels.amp_search import least_loss_first, refine

    moves = [Entry(0, 0, loss=0.3, saved=10.0), *(Entry(g, 0, loss=0.1, saved=0.1) for g in (1, 2, 3))]
    loss = [m.loss for m in moves]

    def meets(config):
        return sum(loss[g] for g, c in enumerate(config) if c == 0) <= 0.35 + 1e-12

    walk_order = refine([1] * 4, moves, meets)
    assert [kept for _, _, kept in walk_order] == [True, False, False, False] + [False] * 3  # pass 2: none
    by_loss = refine([1] * 4, least_loss_first(moves), meets)
    assert [(e.group, kept) for _, e, kept in by_loss] == [(1, True), (2, True), (3, True), (0, False), (0, False)]
    assert least_loss_first(list(reversed(moves[1:]))) == list(reversed(moves[1:]))  # ties: order kept


def test_refine_tries_again_a_move_that_meets_the_budget_after_a_later_one():
    """A metric that does not fall with every move (a coarser activation that happens to cancel
    another's error): group 0's move alone misses the budget by a little, group 1's raises the
    metric, and after it group 0's meets it. One pass undoes group 0; the second keeps it. A pass
    that keeps nothing ends the search, and ``passes`` bounds it."""
    from aimetcli.kernels.amp_search import refine

    def metric(config):
        return 10.0 - (0.5 if config[0] == 0 else 0.0) + (0.3 if config[1] == 0 else 0.0) \
            - (5.0 if config[2] == 0 else 0.0)

    moves = [Entry(0, 0, loss=0.1, saved=1.0), Entry(1, 0, loss=0.2, saved=1.0), Entry(2, 0, loss=0.3, saved=1.0)]

    def meets(config):
        return metric(config) >= 9.6

    tried = refine([1, 1, 1], moves, meets)
    assert [(e.group, kept) for _, e, kept in tried] == [(0, False), (1, True), (2, False), (0, True), (2, False),
                                                          (2, False)]  # pass 3 keeps nothing: the end
    assert [c for c, _, kept in tried if kept][-1] == [0, 0, 1]
    once = refine([1, 1, 1], moves, meets, passes=1)
    assert [(e.group, kept) for _, e, kept in once] == [(0, False), (1, True), (2, False)]


def test_candidates_parse_and_order():
    from aimetcli.kernels.amp_search import default_candidates, ordered

    assert [c.label() for c in default_candidates(4, 8)] == ["W4A8", "W8A8", "W8A16", "float"]
    assert [c.label() for c in default_candidates(8, 8)] == ["W8A8", "W8A16", "float"]
    assert [c.label() for c in ordered([Candidate.parse("float"), Candidate.parse("w8a16"), Candidate.parse("W4a8")])] \
        == ["W4A8", "W8A16", "float"]


# -- the switchable sim -----------------------------------------------------------------------
def _classifier(softmax: bool = False) -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y (logits);
    with ``softmax``, Gemm -> logits -> Softmax -> y."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits" if softmax else "y"], name="fc", transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1))
    return make_model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 5])],
                      [init("w1", rand(6, 2, 3, 3)), init("b1", rand(6, scale=0.1)), init("w2", rand(8, 6, 3, 3)),
                       init("w3", rand(5, 8)), init("b3", rand(5, scale=0.1))])


def _switchable(model, calib, opts):
    from aimetcli.amp.groups import find_groups
    from aimetcli.amp.switch import build_switchable
    from aimetcli.kernels.amp_search import default_candidates
    from aimetcli.model_ops import clone, upgrade_opset
    from aimetcli.steps.amp import _encodings

    work = upgrade_opset(clone(model), 21)
    base, weights, acts = _encodings(work, calib, opts, {4, 8}, {8, 16}, 32)
    groups, _ = find_groups(work, list(base.activations), list(weights), default_candidates(4, 8))
    return build_switchable(work, groups, weights, acts), groups, (base, weights, acts)


def _run(model, feeds, name="y"):
    from aimetcli import runtime

    return runtime.Session(model, runtime.SIMULATE).run(feeds, [name])[0]


def test_switchable_sim_equals_plain_sims_with_the_same_per_layer_bits(tmp_path):
    """Configurations of the one switchable sim against plain sims of the same bits, in
    onnxruntime without optimizations: (a) quantsim with --bits / --exclude rules where calibration
    sees the same weights (activation bitwidths, the last layer float); (b) a plain QDQ sim
    (quantsim's insert) with the switchable sim's own grids where a weight goes to 8 bits."""
    import dataclasses

    from aimetcli.calibration.data import as_dataset
    from aimetcli.model_ops import as_model, clone, upgrade_opset
    from aimetcli.options import QuantOptions
    from aimetcli.quantsim.insert import insert_qdq
    from aimetcli.quantsim.per_layer import BitsRule
    from aimetcli.steps.quantsim import quantsim

    model = as_model(_classifier(), float32=True)
    np.save(tmp_path / "x.npy", rand(16, 2, 6, 6))
    calib = as_dataset(str(tmp_path / "x.npy"), model)
    opts = QuantOptions(param_bw=4, act_bw=8, per_channel=False)
    sw, groups, (base, weights, acts) = _switchable(model, calib, opts)
    names = {g.name: g for g in groups}
    assert {"conv1", "conv2", "fc"} <= set(names) and names["conv1"].activation == "r1"
    feeds = {"x": rand(4, 2, 6, 6)}

    bits = {"w1": 4, "r1": 16, "w2": 4, "r2": 8, "x": 16, "p": 16, "w3": None, "y": None}
    plain, _, _ = quantsim(model, calib, dataclasses.replace(
        opts, bits=(BitsRule("r1", act_bw=16), BitsRule("x", act_bw=16), BitsRule("p", act_bw=16)),
        exclude=("fc",)), check_loads=False)
    got = _run(sw.model, {**feeds, **sw.feeds(bits)}, sw.switched.get("y", "y"))
    np.testing.assert_allclose(got, _run(plain, feeds), rtol=1e-5, atol=1e-6)

    bits = {"w1": 8, "r1": 8, "w2": 4, "r2": 16, "x": 8, "p": 8, "w3": 8, "y": 16}
    plain = upgrade_opset(clone(model), 21)
    insert_qdq(plain, {t: acts[t][b] for t, b in bits.items() if t in acts},
               {**{t: weights[t][b] for t, b in bits.items() if t in weights},
                **{t: e for t, e in base.params.items() if t not in weights}})
    got = _run(sw.model, {**feeds, **sw.feeds(bits)}, "y")
    np.testing.assert_allclose(got, _run(plain, feeds), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, _run(sw.model, {**feeds, **sw.feeds({})}, "y"), rtol=1e-3)  # float differs


# -- the command ------------------------------------------------------------------------------
def _files(tmp_path, softmax: bool = False):
    src = tmp_path / "m.onnx"
    onnx.save(_classifier(softmax), src)
    rng = np.random.default_rng(0)
    x = rand(48, 2, 6, 6)
    np.savez(tmp_path / "d.npz", x=x, label=rng.integers(0, 5, 48))
    return src


FAST = ["--no-equalize", "--no-bias-correct", "--no-adaround", "--quant-scheme", "min-max", "--per-tensor",
        "--param-bw", "4"]


def test_ptq_min_sqnr_exports_the_chosen_bits_and_the_pareto_curve(tmp_path):
    src = _files(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(out), "--data", str(tmp_path / "d.npz"),
                                  "--min-sqnr", "30", *FAST, "--report", str(out / "report.html"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    mp = doc["ptq"]["mixed_precision"] if "ptq" in doc else doc["mixed_precision"]
    chosen = [p for p in mp["pareto"] if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["sqnr_db"] >= 30 and mp["final_sqnr_db"] >= 30
    assert "Mixed precision" in r.stderr and "pareto" in json.dumps(json.loads((out / "report.json").read_text()))
    assert "Mixed precision: output SQNR at least 30 dB" in (out / "report.html").read_text()
    # the encodings give each tensor the bitwidth the search chose
    enc = json.loads((out / "model.encodings").read_text())
    params = {e["name"]: e["bw"] for e in enc["param_encodings"]}
    acts = {e["name"]: e["bw"] for e in enc["activation_encodings"]}
    for g in mp["groups"]:
        if g["weight"]:
            assert params.get(g["weight"]) == g["param_bw"]  # None: float, no encoding
        if g["activation"]:
            assert acts.get(g["activation"]) == g["act_bw"]
    assert {g["chosen"] for g in mp["groups"]} - {"W4A8", "A8"}, "the search raised something above the base"
    # model_qdq.onnx runs in stock onnxruntime with its default optimizations, as the sim does
    feeds = {"x": rand(8, 2, 6, 6)}
    deployed = ort.InferenceSession(str(out / "model_qdq.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sim = ort.InferenceSession(str(out / "sim.onnx"), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    noise = np.sum((deployed - sim) ** 2) / np.sum(ref ** 2)
    assert noise < 10 ** (-25 / 10)


def test_ptq_budget_errors(tmp_path):
    src = _files(tmp_path)
    out = tmp_path / "out"
    base = ["ptq", str(src), "-o", str(out), "--data", str(tmp_path / "d.npz")]
    r = CliRunner().invoke(main, [*base, "--max-drop", "0.5", *FAST])
    assert r.exit_code == 2 and "--min-sqnr" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(main, [*base, "--max-drop", "0.5", "--min-sqnr", "3", "--labels", "label", *FAST])
    assert r.exit_code == 2 and "one budget" in r.stderr
    r = CliRunner().invoke(main, [*base, "--min-sqnr", "200", "--amp-candidates", "w4a8,w8a8", *FAST])
    assert r.exit_code == 1 and "out of reach" in r.stderr and "dB" in r.stderr, r.output
    assert not (out / "model_qdq.onnx").exists() and not (out / "report.json").exists()
    r = CliRunner().invoke(main, [*base, "--min-sqnr", "20", "--amp-candidates", "w4a9x", *FAST])
    assert r.exit_code == 2 and "--amp-candidates" in r.stderr



def test_ptq_min_sqnr_scores_a_softmax_logits_and_counts_16_bit_activations(tmp_path, monkeypatch):
    """A classifier ending in Softmax: ptq's judge scores the logits, which no graph outputs,
    so the switchable sim must output them too (it failed in onnxruntime: "Invalid output
    name"). Candidates W8A8 / W8A16 search activations only; the report counts the
    activations the search raised to 16 bits."""
    # the same model and data whichever tests ran before (W8A8 41 dB, W8A16 43 dB)
    monkeypatch.setattr(sys.modules[__name__], "_RNG", np.random.default_rng(5))
    src = _files(tmp_path, softmax=True)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(out), "--data", str(tmp_path / "d.npz"), "--min-sqnr",
                                  "42", "--amp-candidates", "w8a8,w8a16", *FAST[:-2], "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    mp = doc["ptq"]["mixed_precision"] if "ptq" in doc else doc["mixed_precision"]
    acts = [g for g in mp["groups"] if g["activation"]]
    assert {g["param_bw"] for g in mp["groups"] if g["weight"]} == {8}
    wide = [g for g in acts if g["act_bw"] == 16]
    assert 0 < len(wide) < len(acts), "42 dB needs some activations at 16 bits, not all"
    assert mp["wide_activation_share"] == pytest.approx(len(wide) / len(acts))
    assert mp["final_sqnr_db"] >= 42 - 1e-6
    assert next(p for p in mp["pareto"] if p["chosen"])["wide_activation_share"] == mp["wide_activation_share"]


def test_ptq_min_sqnr_is_measured_on_the_eval_data_when_given(tmp_path):
    """With --eval (no labels) an SQNR budget is measured on the evaluation data, where ptq's
    table reports its scores: the search's pick and its rebuilt sim are scored there (on a real
    recognizer the calibration and evaluation SQNR of one sim differ by 2.5 dB, so a budget met on
    one is missed on the other). The evaluation inputs here are scaled past the calibration
    range, so their SQNR differs from the calibration data's."""
    src = _files(tmp_path)
    np.savez(tmp_path / "e.npz", x=3 * rand(40, 2, 6, 6))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(out), "--data", str(tmp_path / "d.npz"), "--eval",
                                  str(tmp_path / "e.npz"), "--min-sqnr", "5", *FAST, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    ptq = doc["ptq"] if "ptq" in doc else doc
    mp = ptq["mixed_precision"]
    assert "on the evaluation data" in mp["budget"]
    row = next(s for s in ptq["stages"] if s["name"] == "+ mixed precision")
    calib_db = row.get("calib_sqnr_db")
    assert mp["final_sqnr_db"] == pytest.approx(row["sqnr_db"], abs=1e-6), row
    assert calib_db is None or abs(calib_db - row["sqnr_db"]) > 0.5, "the two data sets should score apart"


def test_pareto_png_of_an_activation_only_search_plots_the_share_of_wide_activations(monkeypatch):
    """W8A8 / W8A16 candidates leave every weight at 8 bits: the weight-size panel would stack
    every point on one x; the second panel shows the share of activations at 16 bits instead."""
    from types import SimpleNamespace

    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from aimetcli.amp.report import pareto_png
    from aimetcli.steps.amp import ParetoPoint

    labels: list[str] = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (labels.extend(ax.get_xlabel() for ax in fig.axes),
                                                                 real(fig, *a, **k))[1])
    points = [ParetoPoint(i, None, None, 2.0 - i / 4, 100.0, share, sqnr_db=db, meets=db >= 20)
              for i, (share, db) in enumerate([(1.0, 24.0), (0.5, 23.0), (0.25, 21.0), (0.0, 15.0)])]
    result = SimpleNamespace(pareto=points, metric="sqnr_db", target=20.0, budget="output SQNR at least 20 dB")
    assert pareto_png(result)[:4] == b"\x89PNG"
    assert "activations above the base bitwidth" in labels[1]
    labels.clear()
    points[1].weight_bytes = 80.0
    assert pareto_png(result) is not None and labels[1].startswith("weight size")


def test_budget_veto_drops_a_later_stage_that_takes_the_model_under_the_budget(monkeypatch):
    """The rule alone: a stage after the search is vetoed when, with it, the budget's metric is
    under the target and no better than without it; met, or under it but closer, it stands."""
    from types import SimpleNamespace

    import aimetcli.ptq_amp as ptq_amp
    from aimetcli.ptq_amp import budget_veto

    scores = {}
    judge = object()
    monkeypatch.setattr(ptq_amp, "deployed_value", lambda j, metric, sim: scores[sim] if j is judge else None)
    budget = SimpleNamespace(metric="sqnr_db", target=14.53)
    scores.update(without=14.54, under=14.29, met=14.60, closer=14.40, worse=14.10)
    assert "under the mixed-precision budget's 14.53 dB" in budget_veto(budget, judge, "without", "under")
    assert budget_veto(budget, judge, "without", "met") == ""
    scores["without"] = 14.20  # the search's pick itself rebuilt under the budget
    assert budget_veto(budget, judge, "without", "closer") == ""
    assert budget_veto(budget, judge, "without", "worse").startswith("vetoed")


def test_ptq_drops_bias_correction_that_breaks_the_budget_on_the_eval_data(tmp_path, monkeypatch):
    """Bias correction is kept on the held-out calibration samples (forced here), but on the
    budget's data (--eval) its deployable model scores under the --min-sqnr budget the search met
    (every sim's but the search's pick made to score 100 dB lower): ptq drops it, says why, and
    exports the search's pick. Without that penalty the same flow keeps it."""
    import aimetcli.ptq_amp as ptq_amp
    import aimetcli.ptq_flow as ptq_flow
    from aimetcli.ptq_judge import KeepVerdict

    src = _files(tmp_path)
    np.savez(tmp_path / "e.npz", x=rand(40, 2, 6, 6))
    monkeypatch.setattr(ptq_flow, "bias_correction_verdict",
                        lambda *a, **k: KeepVerdict(True, 10.0, 20.0, k.get("margin_db", 0.0)))
    real_stage, real_value = ptq_amp.amp_stage, ptq_amp.deployed_value

    def run(penalty: float):
        pick: list = []

        def stage(flow, *args):
            sim, mixed = real_stage(flow, *args)
            pick.append(sim.model)
            return sim, mixed

        def value(judge, metric, sim):
            got = real_value(judge, metric, sim)
            return got if not pick or sim is pick[0] else got - penalty

        monkeypatch.setattr(ptq_amp, "amp_stage", stage)
        monkeypatch.setattr(ptq_amp, "deployed_value", value)
        out = tmp_path / f"out{penalty:g}"
        r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(out), "--data", str(tmp_path / "d.npz"), "--eval",
                                      str(tmp_path / "e.npz"), "--min-sqnr", "5", "--no-equalize", "--no-adaround",
                                      "--quant-scheme", "min-max", "--per-tensor", "--param-bw", "4", "--json"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        ptq = doc["ptq"] if "ptq" in doc else doc
        return next(d for d in ptq["decisions"] if d["choice"] == "bias correction"), ptq

    kept, _ = run(0.0)
    assert kept["kept"] is True
    dropped, ptq = run(100.0)
    assert dropped["kept"] is False and "under the mixed-precision budget's 5.00 dB" in dropped["reason"]
    exported = next(s for s in ptq["stages"] if s["name"] == "sim.onnx")
    assert "+ mixed precision" in exported["note"]


def test_step_back_finds_the_last_that_meets_from_the_end():
    """step_back against a scan from the end: the last index that meets, -1 when none does; a
    pick that meets costs one call, one a few steps past the last that meets a few calls."""
    from aimetcli.kernels.amp_search import step_back

    for count in (1, 2, 3, 7, 64, 257):
        for last in range(-1, count):
            calls = []

            def meets(k):
                calls.append(k)
                return k <= last

            assert step_back(count, meets) == last, (count, last)
            assert len(set(calls)) == len(calls), "no index asked twice"
            if last == count - 1:
                assert calls == [count - 1]
            elif last >= 0:
                back = count - 1 - last
                assert len(calls) <= 2 * int(np.ceil(np.log2(back + 1))) + 1, (count, last, calls)
    assert step_back(0, lambda k: True) == -1


def test_mixed_precision_steps_back_when_the_pick_misses_deployed(tmp_path):
    """The search's pick meets the budget as a sim, but its deployable model (here a callback that
    lets only configurations with at least ``need`` wide rules meet) misses it: the search steps
    back along the configurations it went through, to the cheapest that meets deployed, records
    each check in the Pareto points and says so in its note. With every configuration meeting
    deployed, the pick stands and is checked once."""
    from aimetcli.options import AmpOptions, QuantOptions
    from aimetcli.ptq_judge import Judge
    from aimetcli.steps.amp import mixed_precision
    from aimetcli.model_ops import as_model
    from aimetcli.calibration.data import as_dataset

    np.savez(tmp_path / "d.npz", x=np.random.default_rng(5).standard_normal((24, 2, 6, 6)).astype(np.float32))
    model = as_model(_classifier(True))
    data = as_dataset(str(tmp_path / "d.npz"), model)
    judge = Judge(model, data, 24)
    opts = QuantOptions(per_channel=False)
    amp = AmpOptions(min_sqnr=42.0, candidates=())
    seen = []

    def anything(bits, exclude):
        seen.append(len(bits) + len(exclude))
        return 100.0

    free = mixed_precision(model, data, judge, opts, amp, deployed=anything)
    picked = next(p for p in free.pareto if p.chosen)
    assert len(seen) == 1 and picked.deployed == 100.0 and "stepped back" not in free.note
    need = seen[0] + 2  # two wide rules more than the pick has

    def strict(bits, exclude):
        return 100.0 if len(bits) + len(exclude) >= need else 0.0

    held = mixed_precision(model, data, judge, opts, amp, deployed=strict)
    chosen = next(p for p in held.pareto if p.chosen)
    assert chosen.deployed == 100.0 and "stepped back" in held.note
    assert len(held.bits) + len(held.exclude) >= need
    assert any(p.deployed == 0.0 for p in held.pareto), "the pick was checked and missed"
    assert held.relative_bitops >= free.relative_bitops


def test_ptq_searches_with_another_scheme_where_the_budget_is_out_of_reach(tmp_path, monkeypatch):
    """The flow chooses its range scheme at the base bitwidths; where the widest candidate misses
    the budget with it (tf-enhanced's clipped weights under 16-bit activations), the search runs
    with the other scheme the flow tried, says so, and the later stages and the export use it."""
    from aimetcli.steps import amp as amp_step

    real = amp_step.mixed_precision
    tried = []

    def first_out_of_reach(model, calib, judge, options, *args, **kwargs):
        tried.append(options.scheme)
        if len(tried) == 1:
            raise amp_step.BudgetOutOfReach("the budget is out of reach (first scheme)", 12.5)
        return real(model, calib, judge, options, *args, **kwargs)

    monkeypatch.setattr(amp_step, "mixed_precision", first_out_of_reach)
    src = _files(tmp_path)
    out = tmp_path / "out"
    fast = ["--no-equalize", "--no-bias-correct", "--no-adaround", "--per-tensor", "--param-bw", "4"]
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(out), "--data", str(tmp_path / "d.npz"),
                                  "--min-sqnr", "30", "--quant-scheme", "auto", *fast, "--json"])
    assert r.exit_code == 0, r.output
    assert len(tried) == 2 and tried[0] is not tried[1]
    assert (f"out of reach with {tried[0].value} ranges" in r.stderr
            and f"searched with {tried[1].value} ranges" in r.stderr), r.stderr
    doc = json.loads(r.stdout)
    ptq = doc["ptq"] if "ptq" in doc else doc
    assert ptq["options"]["scheme"] == tried[1].value, ptq["options"]
    # out of reach with every scheme: the first scheme's error, nothing written
    monkeypatch.setattr(amp_step, "mixed_precision", lambda *a, **k: (_ for _ in ()).throw(
        amp_step.BudgetOutOfReach("the budget is out of reach: every group at its highest candidate", 1.0)))
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "out2"), "--data", str(tmp_path / "d.npz"),
                                  "--min-sqnr", "30", "--quant-scheme", "auto", *fast])
    assert r.exit_code == 1 and "out of reach" in r.stderr and not (tmp_path / "out2" / "report.json").exists()


def test_ptq_amp_cost_activations_counts_wide_activations(tmp_path, monkeypatch):
    """--amp-cost activations: each activation moved below its widest bitwidth saves the same,
    so the walk takes them least phase-1 loss first, whatever MACs read them; the result says
    which cost it walked by. On this model it keeps fewer 16-bit activations than bit-ops does
    for the same budget (bit-ops gives the activations that feed no layer no saving)."""
    monkeypatch.setattr(sys.modules[__name__], "_RNG", np.random.default_rng(5))
    src = _files(tmp_path, softmax=True)
    shares = {}
    for cost in ("bitops", "activations"):
        out = tmp_path / cost
        r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(out), "--data", str(tmp_path / "d.npz"), "--min-sqnr",
                                      "42", "--amp-candidates", "w8a8,w8a16", "--amp-cost", cost, *FAST[:-2], "--json"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        mp = doc["ptq"]["mixed_precision"] if "ptq" in doc else doc["mixed_precision"]
        assert mp["cost"] == cost and mp["final_sqnr_db"] >= 42 - 1e-6
        shares[cost] = mp["wide_activation_share"]
        walk = [p for p in mp["pareto"] if not p["refined"]][1:]
        if cost == "activations":
            assert "per activation moved below its widest bitwidth" in r.stderr
            # every step moves one activation (candidates differ in activation bits only): each saves as much
            losses = {g["name"]: g["sensitivity"][0]["loss"] for g in mp["groups"]}
            steps = [losses[p["group"]] for p in walk]
            assert steps == sorted(steps) or max(abs(a - b) for a, b in zip(steps, sorted(steps))) < 1e-9
    assert shares["activations"] <= shares["bitops"], shares
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "x"), "--data", str(tmp_path / "d.npz"),
                                  "--amp-cost", "activations", *FAST])
    assert r.exit_code == 2 and "--amp-cost needs a budget" in r.stderr


def _detector_head() -> onnx.ModelProto:
    """x -> Conv -> Relu, then boxes (a Conv scaled to pixels, x 300) and scores (a Conv, Sigmoid)
    -> Concat: a YOLO head, whose parts ptq's judge scores each on its own."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "wb"], ["cb"], name="box_conv"),
             helper.make_node("Mul", ["cb", "pixels"], ["boxes"], name="to_pixels"),
             helper.make_node("Conv", ["r1", "ws"], ["cs"], name="score_conv"),
             helper.make_node("Sigmoid", ["cs"], ["scores"], name="sigmoid"),
             helper.make_node("Concat", ["boxes", "scores"], ["y"], name="head", axis=1)]
    return make_model(nodes, [("x", ["N", 2, 6, 6])], [("y", ["N", 7, 6, 6])],
                      [init("w1", rand(6, 2, 3, 3)), init("b1", rand(6, scale=0.1)), init("wb", rand(4, 6, 1, 1)),
                       init("pixels", np.array(300.0, np.float32)), init("ws", rand(3, 6, 1, 1))])


def test_mixed_precision_scores_a_detector_head_in_parts(tmp_path):
    """A Concat of boxes in pixels and scores in [0, 1]: ptq's judge scores each part on its own
    (scored_tensors.scored_parts), and so does the search (it refused such heads before): its
    SQNR of a configuration is the judge's SQNR of the same tensors, and ptq meets the budget."""
    from aimetcli import api, ptq_judge
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.options import QuantOptions

    src = tmp_path / "m.onnx"
    onnx.save(_detector_head(), src)
    np.savez(tmp_path / "d.npz", x=rand(48, 2, 6, 6))
    model, _ = api.prepare(to_ir(onnx.load(src)))
    data = open_data(str(tmp_path / "d.npz"), input_specs(model))
    judge = ptq_judge.Judge(model, data, 16)
    assert [t for t, _ in judge.scored()] == ["boxes", "scores"]
    sim, _, _ = api.quantsim(api.clone(model), data, QuantOptions())
    parts = _run_names(sim, {"x": np.load(tmp_path / "d.npz")["x"]}, ["boxes_dequantized", "scores_dequantized"])
    assert judge.sqnr_of(parts) == pytest.approx(judge.score(sim).sqnr_db, abs=1e-9)
    r = CliRunner().invoke(main, ["ptq", str(src), "-o", str(tmp_path / "out"), "--data", str(tmp_path / "d.npz"),
                                  "--min-sqnr", "30", "--amp-candidates", "w8a8,w8a16", *FAST[:-2], "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    mp = doc["ptq"]["mixed_precision"] if "ptq" in doc else doc["mixed_precision"]
    assert mp["final_sqnr_db"] >= 30 - 1e-6 and next(p for p in mp["pareto"] if p["chosen"])["sqnr_db"] >= 30 - 1e-6


def _run_names(model, feeds, names):
    from aimetcli import runtime
    from aimetcli.graph_builder import expose

    missing = [n for n in names if n not in {o.name for o in model.graph.outputs}]
    return runtime.Session(expose(model, missing) if missing else model, runtime.SIMULATE).run(feeds, names)
