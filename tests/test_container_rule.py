"""One integer-container rule: what quantsim inserts is what ``Encoding`` says the container is."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper

from aimetcli.kernels.quant import Encoding, encoding_from_range, fake_quantize
from aimetcli.quantsim.insert import SIM_OPSET, WIDE_OPSET, insert_qdq, required_opset
from helpers import make_model, run, to_ir


def _grids():
    for bw in (2, 3, 4, 5, 6, 7, 8, 12, 16):
        yield f"asym{bw}", encoding_from_range(-1.0, 3.0, bw, False)
        yield f"sym{bw}", encoding_from_range(-1.0, 3.0, bw, True)
        yield f"strict{bw}", encoding_from_range(-1.0, 3.0, bw, True, strict_symmetric=True)


@pytest.mark.parametrize("label,enc", list(_grids()), ids=[label for label, _ in _grids()])
def test_inserted_qdq_uses_the_encodings_container_and_clips_exactly_when_it_says(label, enc):
    """A 4-bit grid lives in int8 with a Clip (quantsim writes opset 13, which has no int4): if
    insert.py and ``Encoding.container_dtype`` / ``needs_clip`` ever disagree again, this fails,
    and the graph must still compute fake_quantize bit for bit."""
    proto = make_model([helper.make_node("Identity", ["x"], ["y"])], [("x", [64])], [("y", [64])], [],
                       opset=required_opset([enc]))
    model = to_ir(proto)
    insert_qdq(model, {"x": enc}, {})
    zero_points = [v for name, v in model.graph.initializers.items() if name.endswith("_zero_point")]
    assert [v.const_value.numpy().dtype for v in zero_points] == [enc.container_dtype]
    clips = [n for n in model.graph if n.op_type == "Clip"]
    assert len(clips) == int(enc.needs_clip)
    x = np.linspace(-2.0, 4.0, 64, dtype=np.float32)
    (y,) = run(ir.to_proto(model), {"x": x})
    assert np.array_equal(y, fake_quantize(x, enc))


def test_container_opsets():
    assert required_opset([Encoding(4, True, np.float32(1), -8)]) == SIM_OPSET
    assert required_opset([Encoding(12, False, np.float32(1), 0)]) == WIDE_OPSET
