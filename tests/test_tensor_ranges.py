"""analyze's ranges: grid and data ranges, the clipped share counted against numpy, and the
histograms drawn in the report."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner

from aimetcli import api
from aimetcli.calibration.data import input_specs, open_data
from aimetcli.cli import main
from aimetcli.kernels.quant import Encoding, QuantScheme, encoding_from_range, fake_quantize
from aimetcli.model_ops import clone
from aimetcli.options import QuantOptions
from aimetcli.tensor_ranges import count_clipped, tensor_ranges, weight_range
from helpers import run, to_ir
from test_exclude import _two_layer_model


def test_a_value_is_clipped_beyond_half_a_step_past_the_grid():
    enc = Encoding(8, False, np.float32(0.1), np.int64(-10))  # grid [-1.0, 24.5], step 0.1
    x = np.array([-1.04, -1.06, 24.54, 24.56, 0.0, 30.0], np.float32)
    assert count_clipped(x, enc) == 3  # -1.06, 24.56, 30
    # what fake quantization moves by more than half a step is exactly what is counted
    moved = np.abs(fake_quantize(x, enc) - x) > 0.05 + 1e-6
    assert moved.sum() == 3


def test_per_channel_grids_count_each_channel_against_its_own_range():
    w = np.array([[0.5, -0.5, 2.0], [3.0, -3.0, 1.0]], np.float32)
    enc = encoding_from_range(np.array([-1.0, -3.0]), np.array([1.0, 3.0]), 8, True, axis=0)
    r = weight_range("w", w, enc)
    assert r.channels == 2 and r.clipped == 1 and r.values == 6  # 2.0 in channel 0 only
    assert (r.data_min, r.data_max) == (-3.0, 3.0) and sum(r.histogram) == 6
    assert r.grid_min == float(np.min(enc.dequantized_bounds()[0]))


def test_activation_ranges_match_numpy_on_the_fp32_model():
    proto = _two_layer_model()
    model, _ = api.prepare(to_ir(proto))
    data = open_data("random:12", input_specs(model))
    options = QuantOptions(param_bw=4, act_bw=4, scheme=QuantScheme.PERCENTILE, percentile=90.0)
    _, encodings, _ = api.quantsim(clone(model), data, options)
    ranges = {r.tensor: r for r in tensor_ranges(model, encodings, data, batch_size=5)}
    assert set(ranges) == set(encodings.activations) | set(encodings.params)
    # the reference: the FP32 model (what calibration observes) run in onnxruntime, numpy's counts
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    exposed.graph.output.extend(onnx.helper.make_tensor_value_info(n, 1, None) for n in ("c1", "r1", "c2"))
    feeds = next(iter(data.batches(12)))
    values = dict(zip(["y", "c1", "r1", "c2"], run(exposed, feeds)), x=feeds["x"])
    clipped_somewhere = 0
    for name, enc in encodings.activations.items():
        r, x = ranges[name], values[name]
        lo, hi = enc.dequantized_bounds()
        half = float(enc.scale) / 2
        expected = int(np.count_nonzero(x < lo - half) + np.count_nonzero(x > hi + half))
        assert r.clipped == expected and r.values == x.size and sum(r.histogram) == x.size
        # runs of 5 and of 12 samples may differ in float32's last bits (a Softmax's 6e-19 by 8e-6 relative)
        np.testing.assert_allclose([r.data_min, r.data_max], [x.min(), x.max()], rtol=1e-6,
                                   atol=1e-6 * float(np.abs(x).max()))
        clipped_somewhere += expected > 0
    assert clipped_somewhere  # the 90th percentile cuts the tails


def test_the_report_draws_the_worst_tensors_histograms(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_two_layer_model(), src)
    r = CliRunner().invoke(main, ["analyze", str(src), "-o", str(tmp_path / "an"), "--data", "random:16",
                                  "--samples", "8", "--param-bw", "4", "--quant-scheme", "tf-enhanced"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "an" / "report.json").read_text())
    quantizers = {q["tensor"] for q in doc["quantizers"]}
    assert {row["tensor"] for row in doc["ranges"]} == quantizers
    drawn = [row for row in doc["ranges"] if row["histogram"] is not None]
    assert 0 < len(drawn) <= 8 and all(sum(row["histogram"]) == row["values"] for row in drawn)
    assert all(0 <= row["clipped_fraction"] <= 1 and row["grid_min"] < row["grid_max"] for row in doc["ranges"])
    page = (tmp_path / "an" / "index.html").read_text()
    assert page.index("Ranges of the worst") < page.index("Tensors whose grids clip") < page.index("Per-layer")
    assert page.count('class="grid-end"') == 2 * len(drawn)  # each histogram's grid ends


def test_only_the_tensors_asked_for_get_a_histogram_and_every_other_number_is_the_same():
    model, _ = api.prepare(to_ir(_two_layer_model()))
    data = open_data("random:12", input_specs(model))
    _, encodings, _ = api.quantsim(clone(model), data, QuantOptions(param_bw=4, act_bw=4))
    full = {r.tensor: r for r in tensor_ranges(model, encodings, data, batch_size=5)}
    some = {r.tensor: r for r in tensor_ranges(model, encodings, data, batch_size=5, histograms=["c1", "w2"])}
    assert set(some) == set(full) and len(full) > 2
    for name, r in some.items():
        assert r.histogram == (full[name].histogram if name in ("c1", "w2") else [])
        assert r.to_json() | {"histogram": None} == full[name].to_json() | {"histogram": None}


def test_clipped_values_are_counted_only_once_a_range_leaves_its_grid(monkeypatch):
    import aimetcli.tensor_ranges as tr

    model, _ = api.prepare(to_ir(_two_layer_model()))
    data = open_data("random:12", input_specs(model))
    calls = []
    monkeypatch.setattr(tr, "count_clipped", lambda x, enc: calls.append(x.size) or 0)
    _, minmax, _ = api.quantsim(clone(model), data, QuantOptions(param_bw=4, act_bw=4))
    tr.activation_ranges(model, minmax.activations, data, batch_size=5)
    assert calls == []  # a min-max grid holds its own calibration data: nothing to count
    options = QuantOptions(param_bw=4, act_bw=4, scheme=QuantScheme.PERCENTILE, percentile=90.0)
    _, clipping, _ = api.quantsim(clone(model), data, options)
    tr.activation_ranges(model, clipping.activations, data, batch_size=5)
    assert calls  # the exact count (against numpy: the test above) once values lie beyond the grid
