"""export keeps the model's own clamps: only quantsim's narrow-grid Clip/Max/Min are removed.

A model's Clip(0, 6) right after a quantized tensor (paddle's hard-swish Add+Clip+Mul+Div with its
bounds as initializers, a ReLU6 after a MatMul or after a BN left as Mul+Add) used to be taken for
quantsim's narrow-grid Clip and stripped: "encoding for 'clip_out' names no tensor of the model".
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import main
from aimetcli.quantsim.insert import ROLE_KEY
from helpers import init, make_model, op_count, rand, run


def hard_swish():
    """(a) Conv -> Add(3) -> Clip(0, 6 as initializers) -> Mul(x) -> Div(6)."""
    inits = [init("W", rand(4, 3, 3, 3)), init("three", np.float32(3)), init("zero", np.float32(0)),
             init("six", np.float32(6))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1] * 4),
             helper.make_node("Add", ["c", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["clip_out"]),
             helper.make_node("Mul", ["c", "clip_out"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["y"])]
    return make_model(nodes, [("x", ["N", 3, 5, 5])], [("y", None)], inits), {"x": rand(4, 3, 5, 5, scale=2)}


def matmul_relu6():
    """(b) MatMul -> Clip(0, 6)."""
    inits = [init("W", rand(8, 6)), init("zero", np.float32(0)), init("six", np.float32(6))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"]),
             helper.make_node("Clip", ["mm", "zero", "six"], ["y"])]
    return make_model(nodes, [("x", ["N", 8])], [("y", None)], inits), {"x": rand(4, 8, scale=2)}


def unfolded_bn_relu6():
    """(c) Conv -> Mul -> Add (a BN written as Mul+Add) -> Clip(0, 6) -> Conv."""
    inits = [init("W1", rand(4, 3, 1, 1)), init("s", rand(1, 4, 1, 1)), init("b", rand(1, 4, 1, 1)),
             init("zero", np.float32(0)), init("six", np.float32(6)), init("W2", rand(2, 4, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c"]),
             helper.make_node("Mul", ["c", "s"], ["bn_mul"]),
             helper.make_node("Add", ["bn_mul", "b"], ["bn_add"]),
             helper.make_node("Clip", ["bn_add", "zero", "six"], ["clip_out"]),
             helper.make_node("Conv", ["clip_out", "W2"], ["y"])]
    return make_model(nodes, [("x", ["N", 3, 4, 4])], [("y", None)], inits), {"x": rand(4, 3, 4, 4, scale=3)}


def quantsim(tmp_path, proto, *extra):
    src, sim = tmp_path / "m.onnx", tmp_path / "sim.onnx"
    onnx.save(proto, src)
    r = CliRunner().invoke(main, ["quantsim", str(src), "-o", str(sim), "--data", "random:16", *extra])
    assert r.exit_code == 0, r.output
    return sim


def export(tmp_path, sim):
    deploy = tmp_path / "deploy"
    r = CliRunner().invoke(main, ["export", str(sim), "-o", str(deploy)])
    assert r.exit_code == 0, r.output
    return onnx.load(deploy / "model.onnx"), onnx.load(deploy / "model_qdq.onnx")


@pytest.mark.parametrize("build", [hard_swish, matmul_relu6, unfolded_bn_relu6])
@pytest.mark.parametrize("extra", [[], ["--act-bw", "6", "--param-bw", "6", "--per-channel"],
                                   ["--act-bw", "4", "--param-bw", "4"]])
def test_export_keeps_the_models_own_clip(tmp_path, build, extra):
    proto, feeds = build()
    sim = quantsim(tmp_path, proto, *extra)
    fp32, qdq = export(tmp_path, sim)
    # model.onnx is the original model, its Clip included
    assert op_count(fp32, "Clip") == 1 and op_count(fp32, "Max") == op_count(fp32, "Min") == 0
    np.testing.assert_array_equal(run(fp32, feeds)[0], run(proto, feeds)[0])
    # the deployable model keeps it too (beside the grid Clips of 6-bit activations), and computes the sim
    grid_clips = sum(1 for n in qdq.graph.node if n.op_type == "Clip" and ROLE_KEY in {p.key for p in n.metadata_props})
    assert op_count(qdq, "Clip") - grid_clips == 1
    assert (grid_clips > 0) == bool(extra)
    np.testing.assert_array_equal(run(qdq, feeds)[0], run(onnx.load(sim), feeds)[0])


@pytest.mark.parametrize("build", [hard_swish, unfolded_bn_relu6])
@pytest.mark.parametrize("bits", ["6", "4"])
def test_sims_written_before_the_mark_still_export(tmp_path, build, bits):
    """A sim of the previous version has unmarked grid Clips and Max/Min: those are recognised by
    their bounds being exactly the narrow grid's (4-bit grids too, which live in int8 containers
    here), and the model's Clip(0, 6) is kept."""
    proto, feeds = build()
    sim = quantsim(tmp_path, proto, "--act-bw", bits, "--param-bw", bits, "--per-channel")
    old = onnx.load(sim)
    marked = 0
    for node in old.graph.node:
        kept = [p for p in node.metadata_props if p.key != ROLE_KEY]
        marked += len(node.metadata_props) - len(kept)
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    assert marked >= 3  # activation Clips and the weights' Max/Min
    onnx.save(old, sim)
    fp32, qdq = export(tmp_path, sim)
    assert op_count(fp32, "Clip") == 1 and op_count(fp32, "Max") == op_count(fp32, "Min") == 0
    np.testing.assert_array_equal(run(fp32, feeds)[0], run(proto, feeds)[0])
    np.testing.assert_array_equal(run(qdq, feeds)[0], run(old, feeds)[0])
