"""Which tensors equalization changes (steps.rewrite.changed_activations), and ptq's reuse of the
folded model's calibration for the others (SharedObservations.inherit); bias correction's sim on
the incumbent's grids (every observation inherited)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from aimetcli import api
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.kernels.quant import QuantScheme
from aimetcli.model_ops import clone
from aimetcli.quantsim.observations import SharedObservations
from aimetcli.quantsim.placement import QuantOptions
from helpers import bn_inits, bn_node, init, make_model, rand, session, to_ir  # our own RNG: helpers' is shared

RNG = np.random.default_rng(11)


def _spread(shape, axis=0):
    w = RNG.standard_normal(shape).astype(np.float32)
    scales = 10.0 ** RNG.uniform(-1.5, 1.5, shape[axis])
    b = [1] * len(shape)
    b[axis] = -1
    return (w * scales.reshape(b)).astype(np.float32)


def chain_with_side(clip6: bool, beta: float = 2.0) -> onnx.ModelProto:
    """x -> c1 -> BN (betas about ``beta``: 2 is high enough to absorb) -> Relu or Clip(0, 6) -> c2
    -> Relu -> c3 -> out, and a side branch x -> s1 -> Sigmoid -> side that no chain touches."""
    inits = [init("W1", _spread((8, 3, 3, 3))), init("W2", _spread((8, 8, 3, 3), axis=1)), init("B2", rand(8, rng=RNG)),
             init("W3", _spread((4, 8, 1, 1), axis=1)), init("B3", rand(4, rng=RNG)), init("S1", rand(2, 3, 1, 1, rng=RNG)),
             init("lo", np.array(0, np.float32)), init("hi", np.array(6, np.float32))] + bn_inits("bn", 8, RNG)
    inits[-3] = init("bn_b", (RNG.normal(0, 0.3, 8) + beta).astype(np.float32))
    act = helper.make_node("Clip", ["z1", "lo", "hi"], ["a1"]) if clip6 else helper.make_node("Relu", ["z1"], ["a1"])
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["y1"], name="c1", pads=[1] * 4),
        bn_node("bn", "y1", "z1"),
        act,
        helper.make_node("Conv", ["a1", "W2", "B2"], ["y2"], name="c2"),
        helper.make_node("Relu", ["y2"], ["a2"]),
        helper.make_node("Conv", ["a2", "W3", "B3"], ["out"], name="c3"),
        helper.make_node("Conv", ["x", "S1"], ["s1"], name="s1"),
        helper.make_node("Sigmoid", ["s1"], ["side"]),
    ]
    return make_model(nodes, [("x", [2, 3, 10, 10])], [("out", None), ("side", None)], inits)


def every_tensor(model: ir.Model, feeds: dict) -> dict[str, np.ndarray]:
    """Every node output's value, in onnxruntime without optimizations."""
    proto = ir.serde.serialize_model(model)
    proto = onnx.shape_inference.infer_shapes(proto)
    known = {o.name for o in proto.graph.output}
    produced = {o for n in proto.graph.node if n.op_type != "Constant" for o in n.output}
    for vi in proto.graph.value_info:
        if vi.name not in known and vi.name in produced:
            proto.graph.output.append(vi)
    sess = session(proto)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


@pytest.mark.parametrize("clip6, beta", [(False, -5.0), (False, 2.0), (True, -5.0)])
def test_changed_tensors_are_exactly_those_whose_values_moved(clip6, beta):
    """Every tensor equalization does not list keeps its FP32 value (rtol 1e-5); every listed one
    moved. After a bias absorbed through a Relu (inexact where the pre-activation falls below the
    amount absorbed) or a ReLU6 replaced (Relu differs above 6), everything after is listed."""
    folded, _ = api.prepare(to_ir(chain_with_side(clip6, beta)))
    api.fold_bn(folded)
    equalized = clone(folded)
    summary = api.equalize(equalized)
    assert summary.scaling_sets == 2 and bool(summary.bias_absorbed) == (beta > 0)
    assert summary.relu6_replaced == int(clip6)
    changed = summary.changed
    assert changed is not None
    assert "side" not in changed and "s1" not in changed
    assert {"z1", "a1", "y2", "a2"} <= changed
    assert ("out" in changed) == (clip6 or beta > 0)
    feeds = {"x": (rand(2, 3, 10, 10, rng=RNG) * 4).astype(np.float32)}  # activations above 6 somewhere
    before, after = every_tensor(folded, feeds), every_tensor(equalized, feeds)
    for name, value in after.items():
        if name not in changed:
            scale = max(1.0, float(np.abs(before[name]).max()))
            np.testing.assert_allclose(value, before[name], rtol=1e-5, atol=1e-6 * scale, err_msg=name)
    moved = [n for n in changed if n in before and not np.allclose(after[n], before[n], rtol=1e-5, atol=1e-6)]
    assert set(moved) >= {"a1"}


def test_equalized_calibration_observes_only_the_changed_tensors():
    """A sim of the equalized model calibrated with the folded model's observations inherited
    runs over only the changed tensors and gets the grids a fresh calibration gets."""
    folded, _ = api.prepare(to_ir(chain_with_side(False)))
    api.fold_bn(folded)
    dataset = open_data("random:16", input_specs(folded))
    run = api.RunOptions(batch_size=8)
    for scheme in (QuantScheme.MIN_MAX, QuantScheme.TF_ENHANCED):
        opts = QuantOptions(scheme=scheme)
        folded_runs = SharedObservations.for_schemes((scheme,))
        api_quantsim(folded, dataset, opts, run, folded_runs)
        equalized = clone(folded)
        summary = api.equalize(equalized)
        inherited = folded_runs.inherit(lambda t: t not in summary.changed)
        _, reused, _ = api_quantsim(equalized, dataset, opts, run, inherited)
        _, fresh, _ = api_quantsim(equalized, dataset, opts, run, None)
        assert inherited.made == 1 and 0 < inherited.tensors_run <= len(summary.changed)
        assert reused.activations.keys() == fresh.activations.keys()
        for name, enc in fresh.activations.items():
            np.testing.assert_allclose(reused.activations[name].scale, enc.scale, rtol=1e-5, err_msg=name)
            np.testing.assert_array_equal(reused.activations[name].offset, enc.offset)


def test_bias_corrected_sim_on_the_incumbents_grids_makes_no_run():
    """ptq's "+ bias-correct, kept grids" sim: the corrected model calibrated with every one of the
    incumbent's observations inherited runs nothing over the data and gets the incumbent's
    activation grids exactly; only the biases differ (a fresh calibration sees their shift)."""
    folded, _ = api.prepare(to_ir(chain_with_side(False)))
    api.fold_bn(folded)
    dataset = open_data("random:16", input_specs(folded))
    run = api.RunOptions(batch_size=8)
    opts = QuantOptions(scheme=QuantScheme.TF_ENHANCED)
    runs = SharedObservations.for_schemes((QuantScheme.TF_ENHANCED,))
    _, incumbent, _ = api_quantsim(folded, dataset, opts, run, runs)
    corrected = clone(folded)
    api.bias_correct(corrected, dataset, opts, run, method="empirical")
    kept = runs.inherit(lambda _: True)
    _, on_kept, _ = api_quantsim(corrected, dataset, opts, run, kept)
    _, fresh, _ = api_quantsim(corrected, dataset, opts, run, None)
    assert kept.made == 0 and kept.tensors_run == 0
    assert on_kept.activations == incumbent.activations
    assert any(fresh.activations[n] != e for n, e in incumbent.activations.items())


def api_quantsim(model, dataset, opts, run, shared):
    from aimetcli.steps.quantsim import quantsim

    return quantsim(model, dataset, opts, run, shared=shared)


def test_recalibrating_a_corrected_model_observes_only_what_the_corrections_reach():
    """ptq's "+ bias-correct" sim: bias correction moves only the corrected layers' biases, so the
    tensors no corrected layer reaches (graph.downstream_of) keep their FP32 values; calibrated
    with those observations inherited, the corrected model's sim runs over the others only and
    gets the grids a fresh calibration gets."""
    from aimetcli import graph as g

    folded, _ = api.prepare(to_ir(chain_with_side(False)))
    api.fold_bn(folded)
    dataset = open_data("random:16", input_specs(folded))
    run = api.RunOptions(batch_size=8)
    opts = QuantOptions(scheme=QuantScheme.TF_ENHANCED, exclude=("c1", "s1"))  # c2 and c3 corrected
    runs = SharedObservations.for_schemes((QuantScheme.TF_ENHANCED,))
    api_quantsim(folded, dataset, opts, run, runs)
    corrected = clone(folded)
    summary = api.bias_correct(corrected, dataset, opts, run, method="empirical")
    assert sorted(c.layer for c in summary.corrected) == ["c2", "c3"]
    reached = g.downstream_of(corrected, [c.layer for c in summary.corrected])
    assert reached is not None and {"y2", "a2", "out"} <= reached and not reached & {"x", "a1", "side"}
    inherited = runs.inherit(lambda t: t not in reached)
    _, reused, _ = api_quantsim(corrected, dataset, opts, run, inherited)
    _, fresh, _ = api_quantsim(corrected, dataset, opts, run, None)
    assert inherited.made == 1 and 0 < inherited.tensors_run < len(fresh.activations)
    assert reused.activations.keys() == fresh.activations.keys()
    for name, enc in fresh.activations.items():
        np.testing.assert_allclose(reused.activations[name].scale, enc.scale, rtol=1e-5, err_msg=name)
        np.testing.assert_array_equal(reused.activations[name].offset, enc.offset)


def test_downstream_of_names_what_a_change_can_reach_or_says_it_cannot_tell():
    from aimetcli import graph as g

    model = to_ir(chain_with_side(False))
    assert g.downstream_of(model, ["c2"]) == {"y2", "a2", "out"}
    assert g.downstream_of(model, ["c1", "s1"]) >= {"y1", "z1", "a1", "y2", "out", "s1", "side"}
    assert g.downstream_of(model, []) == frozenset()
    assert g.downstream_of(model, ["no such node"]) is None
    nodes = list(model.graph)
    nodes[-1].name = "c2"  # two nodes labelled c2: which one changed cannot be told
    assert g.downstream_of(model, ["c3"]) is None


def test_an_observation_is_searched_once_for_its_grid(monkeypatch):
    """Sims of one model that ask the same observation for the same grid (ptq's weight candidates,
    the kept-grids sim) share its search; another setting searches again."""
    from aimetcli.quantsim import calibrate

    folded, _ = api.prepare(to_ir(chain_with_side(False)))
    api.fold_bn(folded)
    dataset = open_data("random:16", input_specs(folded))
    run = api.RunOptions(batch_size=8)
    runs = SharedObservations.for_schemes((QuantScheme.TF_ENHANCED,))
    searched = []
    real = calibrate.observe_encoding

    def counting(obs, *args, **kw):
        searched.append(obs)
        return real(obs, *args, **kw)

    def activation_searches() -> int:  # weights are searched through observe_encoding too
        observed = {id(o) for seen in runs._seen.values() for o in seen.values()}
        return sum(id(o) in observed for o in searched)

    monkeypatch.setattr(calibrate, "observe_encoding", counting)
    _, first, _ = api_quantsim(folded, dataset, QuantOptions(scheme=QuantScheme.TF_ENHANCED), run, runs)
    n = activation_searches()
    _, again, _ = api_quantsim(folded, dataset, QuantOptions(scheme=QuantScheme.TF_ENHANCED, per_channel=True),
                               run, runs)
    assert n == len(first.activations) and activation_searches() == n
    assert again.activations == first.activations
    _, other, _ = api_quantsim(folded, dataset, QuantOptions(scheme=QuantScheme.TF_ENHANCED, act_bw=6), run, runs)
    assert activation_searches() == 2 * n and other.activations != first.activations

