"""quantsim, bias-correct and ptq on a model whose network sits in If/Loop subgraphs.

Quantizers go on the main graph only. A VAD model whose whole network is inside
If(sr == 16000) came out of quantsim as "4 activation and 0 weight quantizers", exit 0: an
FP32 model called quantized. Now such a model is refused with one line naming the If and its
node count; one with part of its network in a subgraph gets a warning naming what stays float."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from aimetcli import api
from aimetcli import graph as g
from aimetcli.cli import main
from helpers import init, rand, to_ir


def branch(name: str, weight: str, out: str) -> onnx.GraphProto:
    """Conv (weight from the outer scope) -> Relu, reading the outer value ``h``."""
    nodes = [helper.make_node("Conv", ["h", weight], [f"{name}_c"], name=f"{name}_conv", pads=[1] * 4),
             helper.make_node("Relu", [f"{name}_c"], [out], name=f"{name}_relu")]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 4, 6, 6])])


def if_model(conv_outside: bool) -> onnx.ModelProto:
    """cond = mean(x) > 0; y = If(cond, conv_a(h), conv_b(h)), h = x or Conv(x) in the main graph."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0, name="mean"),
             helper.make_node("Greater", ["m", "zero"], ["cond"], name="gt")]
    inits = [init("zero", np.float32(0)), init("Wa", rand(4, 4, 3, 3)), init("Wb", rand(4, 4, 3, 3))]
    if conv_outside:
        nodes.append(helper.make_node("Conv", ["x", "W0"], ["h"], name="stem", pads=[1] * 4))
        inits.append(init("W0", rand(4, 4, 3, 3)))
    else:
        nodes.append(helper.make_node("Identity", ["x"], ["h"], name="id"))
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="sr_branch",
                                  then_branch=branch("then", "Wa", "ya"), else_branch=branch("else", "Wb", "yb")))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_control_flow_nodes_counts_the_nodes_inside():
    flow = g.control_flow_nodes(to_ir(if_model(conv_outside=False)))
    assert [(node.name, count) for node, count in flow.holders] == [("sr_branch", 4)]
    assert flow.weighted == 2 and flow.describe() == "If 'sr_branch' (4 nodes)"
    assert g.control_flow_nodes(to_ir(if_model(conv_outside=True))).nodes == 4


def invoke(tmp_path, proto, command, *flags):
    onnx.save(proto, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=rand(8, 4, 6, 6))
    return CliRunner().invoke(main, [command, str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"),
                                     "--data", str(tmp_path / "x.npz"), *flags])


@pytest.mark.parametrize("command", ["quantsim", "bias-correct", "ptq"])
def test_network_inside_an_if_is_refused(tmp_path, command):
    result = invoke(tmp_path, if_model(conv_outside=False), command)
    assert result.exit_code == 1, (result.stderr, result.exception)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")]  # (ptq shows its stages)
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert errors[0].startswith("Error: the network is inside the subgraphs of If 'sr_branch' (4 nodes), "
                                "which aimetcli does not quantize")
    assert "Traceback" not in result.output
    assert not os.path.exists(tmp_path / "out.onnx")


def test_part_of_the_network_inside_an_if_is_a_warning(tmp_path):
    result = invoke(tmp_path, if_model(conv_outside=True), "quantsim", "-v")
    assert result.exit_code == 0, (result.stderr, result.exception)
    text = " ".join(result.stderr.split())
    assert "4 nodes inside the subgraphs of If 'sr_branch' (4 nodes) stay float (2 of them weighted layers)" in text
    assert "not quantized: sr_branch: If with 4 nodes in its subgraphs, which are not quantized" in text
    assert "1 weight quantizers" in text or "1 weight quantizer" in text


def test_library_placement_refuses_too():
    from aimetcli.errors import AimetCliError
    from aimetcli.quantsim.config import load_config
    from aimetcli.quantsim.placement import QuantOptions, place_quantizers

    model, _ = api.prepare(to_ir(if_model(conv_outside=False)))
    with pytest.raises(AimetCliError, match="If 'sr_branch' \\(4 nodes\\)"):
        place_quantizers(model, load_config(None), QuantOptions())


@pytest.mark.parametrize("command", ["fold-bn", "equalize"])
def test_rewrites_name_what_they_leave_inside_an_if(tmp_path, command):
    """fold-bn said only "No BatchNormalization in the model" when the network sat in an If."""
    onnx.save(if_model(conv_outside=False), tmp_path / "m.onnx")
    result = CliRunner().invoke(main, [command, str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 0, (result.stderr, result.exception)
    text = " ".join(result.stderr.split())
    assert "4 nodes inside the subgraphs of If 'sr_branch' (4 nodes) are left as they are" in text


@pytest.mark.parametrize("command,flags", [("bias-correct", ()), ("adaround", ("--param-bw", "4", "--iterations", "20"))])
def test_weight_rewrites_name_what_they_leave_inside_an_if(tmp_path, command, flags):
    """bias-correct and adaround said nothing of the layers inside an If (a wheel's wake-word model:
    3 Gemms in the If's branch), where quantsim, fold-bn and equalize warn."""
    result = invoke(tmp_path, if_model(conv_outside=True), command, *flags)
    assert result.exit_code == 0, (result.stderr, result.exception)
    text = " ".join(result.stderr.split())
    assert "4 nodes inside the subgraphs of If 'sr_branch' (4 nodes) are left as they are" in text
