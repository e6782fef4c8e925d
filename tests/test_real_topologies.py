"""fold-bn and cross-layer scaling on real topologies from the onnx package's test data."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from aimetcli import api
from helpers import op_count, run

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ["light_resnet50.onnx", "light_shufflenet.onnx", "light_densenet121.onnx", "light_inception_v2.onnx"]


def feeds_for(proto: onnx.ModelProto) -> dict:
    inits = {t.name for t in proto.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for i in proto.graph.input:
        if i.name in inits:
            continue
        shape = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", MODELS)
def test_fold_bn_is_exact_on_real_topologies(name):
    path = os.path.join(LIGHT, name)
    proto = onnx.load(path)
    model, _ = api.load(path)
    _, summary = api.fold_bn(model)
    assert op_count(proto, "BatchNormalization") > 40
    if "densenet" in name:
        # pre-activation BNs (after Concat/MaxPool, before Relu) cannot be folded exactly: left, with reasons
        assert len(summary.folded) >= 1 and summary.remaining_bn == len(summary.skipped)
        assert all("fed by" in s.reason and "followed by" in s.reason for s in summary.skipped)
    else:
        assert summary.remaining_bn == 0, summary.skipped
    feeds = feeds_for(proto)
    a, b = run(proto, feeds)[0], run(model, feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


@pytest.mark.parametrize("name", MODELS)
def test_cross_layer_scaling_is_exact_on_real_topologies(name):
    path = os.path.join(LIGHT, name)
    proto = onnx.load(path)
    model, _ = api.load(path)
    summary = api.equalize(model, api.EqualizeOptions(replace_relu6=False, high_bias_fold=False))
    feeds = feeds_for(proto)
    a, b = run(proto, feeds)[0], run(model, feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
    if "resnet" in name:  # the others put Mul (inception) or BN/Concat (densenet, shufflenet) between layers
        assert summary.scaling_sets > 10
