"""AIMET encodings JSON: golden files, round trips and malformed input, for 0.6.1, 1.0.0 and 2.0.0."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from aimetcli.encodings import (
    SUPPORTED_VERSIONS,
    EncodingsError,
    QuantizerArgs,
    TensorEncoding,
    aimet_quant_scheme_name,
    dumps,
    loads,
    to_dict,
)
from aimetcli.kernels.quant import Encoding, QuantScheme, encoding_from_range

GOLDEN = Path(__file__).parent / "golden"
PARAMS = {"fc.weight", "conv.weight"}


def golden_set() -> list[TensorEncoding]:
    return [
        TensorEncoding("input", Encoding(8, False, np.float32(3.0 / 255), -85), "activation"),
        TensorEncoding("fc.weight", Encoding(8, True, np.float32(0.5 / 127), -128), "param"),
        TensorEncoding("conv.weight", Encoding(8, True, np.array([0.001, 0.02, 0.3], np.float32) / 127,
                                               np.full(3, -128), axis=0), "param"),
        TensorEncoding("relu_out", Encoding(16, False, np.float32(10.5 / 65535), -18724), "activation"),
    ]


QARGS = QuantizerArgs(activation_bitwidth=8, param_bitwidth=8, per_channel=True, activation_symmetric=False,
                      param_symmetric=True, quant_scheme="post_training_tf_enhanced")
EXCLUDED = ["Softmax_0"]


def _dump(version: str) -> str:
    return dumps(golden_set(), version=version, quantizer_args=QARGS, excluded_layers=EXCLUDED)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_golden_files(version):
    path = GOLDEN / f"encodings_{version}.json"
    text = _dump(version)
    assert json.loads(text) == json.loads(path.read_text())
    assert text.encode() == path.read_bytes()
    assert text == _dump(version)  # deterministic


def test_golden_layouts_follow_aimet():
    v061 = json.loads((GOLDEN / "encodings_0.6.1.json").read_text())
    entry = v061["activation_encodings"]["input"][0]
    assert entry == {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": pytest.approx(2.0),
                     "min": pytest.approx(-1.0), "offset": -85, "scale": pytest.approx(3.0 / 255)}
    assert len(v061["param_encodings"]["conv.weight"]) == 3
    assert v061["quantizer_args"] == {"activation_bitwidth": 8, "dtype": "int", "is_symmetric": True,
                                      "param_bitwidth": 8, "per_channel_quantization": True,
                                      "quant_scheme": "post_training_tf_enhanced"}
    v100 = json.loads((GOLDEN / "encodings_1.0.0.json").read_text())
    conv = next(e for e in v100["param_encodings"] if e["name"] == "conv.weight")
    assert conv["enc_type"] == "PER_CHANNEL" and conv["dtype"] == "INT" and conv["bw"] == 8
    assert conv["is_sym"] is True and conv["offset"] == [-128] * 3 and len(conv["scale"]) == 3
    assert v100["excluded_layers"] == EXCLUDED
    v200 = json.loads((GOLDEN / "encodings_2.0.0.json").read_text())
    assert set(v200) == {"version", "encodings"}
    by_name = {e["name"]: e for e in v200["encodings"]}
    assert by_name["input"] == {"name": "input", "output_dtype": "uint8", "y_scale": pytest.approx(3.0 / 255),
                                "y_zero_point": 85}
    assert by_name["fc.weight"].keys() == {"name", "output_dtype", "y_scale"}  # zero point 0 omitted
    assert by_name["conv.weight"]["axis"] == 0 and isinstance(by_name["conv.weight"]["y_scale"], list)
    assert by_name["relu_out"]["output_dtype"] == "uint16" and by_name["relu_out"]["y_zero_point"] == 18724


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_round_trip_keeps_float32_scale_and_offset(version):
    rng = np.random.default_rng(1)
    encs = golden_set() + [
        TensorEncoding("odd", Encoding(8, False, np.float32(rng.uniform(1e-6, 1e3)), -3), "activation"),
        TensorEncoding("strict.weight", encoding_from_range(-0.3, 0.2, 8, True, strict_symmetric=True), "param"),
        TensorEncoding("w4", encoding_from_range(rng.uniform(-1, 0, 5), rng.uniform(0, 1, 5), 4, True, axis=1),
                       "param"),
    ]
    for i in range(20):  # awkward float32 scales
        s = np.float32(rng.uniform(0, 1) * 10.0 ** rng.integers(-12, 6))
        encs.append(TensorEncoding(f"t{i}", Encoding(8, False, s, -int(rng.integers(0, 256))), "activation"))
    f = loads(dumps(encs, version=version, quantizer_args=QARGS), param_names=PARAMS | {"strict.weight", "w4"})
    assert f.version == version
    got = {te.name: te for te in f.encodings}
    assert got.keys() == {te.name for te in encs}
    for te in encs:
        back = got[te.name]
        assert back.kind == te.kind
        assert back.encoding.scale.dtype == np.float32
        assert np.array_equal(back.encoding.scale.view(np.uint32), te.encoding.scale.view(np.uint32)), te.name
        assert np.array_equal(back.encoding.offset, te.encoding.offset), te.name
        assert back.encoding.bitwidth == te.encoding.bitwidth and back.encoding.symmetric == te.encoding.symmetric
        if version == "2.0.0":
            assert back.encoding == te.encoding  # axis included
        else:
            assert back.encoding.axis is None  # not recorded; the caller maps it from the model
    if version == "2.0.0":
        assert f.quantizer_args is None and f.excluded_layers == ()
    else:
        assert f.quantizer_args == QARGS


def test_2_0_0_zero_points_follow_aimet():
    strict = Encoding(8, True, np.float32(0.01), -127)
    d = to_dict([TensorEncoding("w", strict, "param")], version="2.0.0")
    assert d["encodings"][0]["y_zero_point"] == -1  # AIMET: -offset - 2^(bits-1)
    assert loads(json.dumps(d)).encodings[0].encoding == strict
    with pytest.raises(ValueError, match="1.0.0"):
        to_dict([TensorEncoding("a", Encoding(6, False, np.float32(0.1), -3), "activation")], version="2.0.0")
    with pytest.raises(ValueError, match="axis"):
        to_dict([TensorEncoding("w", Encoding(8, True, np.ones(2, np.float32), [-128, -128]), "param")],
                version="2.0.0")


def test_2_0_0_kinds_without_param_names():
    f = loads(_dump("2.0.0"))
    kinds = {te.name: te.kind for te in f.encodings}
    assert kinds == {"input": "activation", "fc.weight": "activation", "conv.weight": "param",
                     "relu_out": "activation"}


def test_reads_what_other_writers_produce():
    # AIMET-ONNX writes libpymo offsets as floats; the spec gives quantizer_args flags as strings.
    text = json.dumps({
        "version": "1.0.0",
        "activation_encodings": [{"name": "x", "enc_type": "PER_TENSOR", "dtype": "INT", "bw": 8,
                                  "is_sym": False, "scale": [0.1], "offset": [-12.0]},
                                 {"name": "h", "enc_type": "PER_TENSOR", "dtype": "FLOAT", "bw": 16}],
        "param_encodings": [{"name": "w", "enc_type": "PER_TENSOR", "dtype": "INT", "bw": 8,
                             "is_sym": True, "scale": [0.2], "offset": [0]}],  # unsigned symmetric
        "quantizer_args": {"activation_bitwidth": 8, "dtype": "int", "is_symmetric": "True",
                           "param_bitwidth": 8, "per_channel_quantization": "False",
                           "quant_scheme": "post_training_tf"},
        "producer": {"name": "someone"},
    })
    f = loads(text)
    assert [te.name for te in f.encodings] == ["x", "w"] and f.float_tensors == ("h",)
    assert int(f.encodings[0].encoding.offset) == -12
    assert f.encodings[1].encoding == Encoding(8, False, np.float32(0.2), 0)
    assert f.quantizer_args == QuantizerArgs(8, 8, False, False, True, "post_training_tf")
    signed_asym = loads(json.dumps({"version": "2.0.0", "encodings": [
        {"name": "a", "output_dtype": "int8", "y_scale": 0.5, "y_zero_point": 5}]}))
    enc = signed_asym.encodings[0].encoding
    assert not enc.symmetric and int(enc.offset) == -133  # same grid as int8 with zero point 5


def test_aimet_scheme_names():
    assert [aimet_quant_scheme_name(s) for s in QuantScheme] == [
        "post_training_tf", "post_training_tf_enhanced", "post_training_percentile"]


def _mutated(version: str, mutate) -> str:
    obj = json.loads(_dump(version))
    mutate(obj)
    return json.dumps(obj)


def _first(obj, group):
    g = obj[group]
    return g[0] if isinstance(g, list) else next(iter(g.values()))[0]


MALFORMED = [
    ("1.0.0", lambda o: o.pop("version"), "'version'"),
    ("1.0.0", lambda o: o.update(version="3.1.4"), "'version'"),
    ("1.0.0", lambda o: o.update(version=1), "'version'"),
    ("1.0.0", lambda o: o.pop("param_encodings"), "'param_encodings'"),
    ("1.0.0", lambda o: o.update(activation_encodings={}), "'activation_encodings'"),
    ("1.0.0", lambda o: _first(o, "param_encodings").pop("scale"), "'scale'"),
    ("1.0.0", lambda o: _first(o, "param_encodings").update(is_sym="True"), "'is_sym'"),
    ("1.0.0", lambda o: _first(o, "param_encodings").update(bw="8"), "'bw'"),
    ("1.0.0", lambda o: _first(o, "param_encodings").update(offset=[-128.5]), "'offset'"),
    ("1.0.0", lambda o: _first(o, "param_encodings").update(scale=["x"]), "'scale'"),
    ("1.0.0", lambda o: _first(o, "param_encodings").update(enc_type="PER_BLOCK"), "'enc_type'"),
    ("1.0.0", lambda o: _first(o, "param_encodings").update(offset=[-3]), "offset"),
    ("1.0.0", lambda o: _first(o, "activation_encodings").pop("name"), "'name'"),
    ("1.0.0", lambda o: _first(o, "activation_encodings").update(scale=[0.0]), "scale"),
    ("1.0.0", lambda o: o["quantizer_args"].pop("param_bitwidth"), "'param_bitwidth'"),
    ("1.0.0", lambda o: o.update(excluded_layers="head"), "'excluded_layers'"),
    ("0.6.1", lambda o: _first(o, "activation_encodings").update(is_symmetric=False), "'is_symmetric'"),
    ("0.6.1", lambda o: _first(o, "param_encodings").pop("offset"), "'offset'"),
    ("0.6.1", lambda o: _first(o, "param_encodings").update(dtype="INT"), "'dtype'"),
    ("0.6.1", lambda o: o.update(param_encodings=[]), "'param_encodings'"),
    ("0.6.1", lambda o: o["param_encodings"].update({"b": []}), "param_encodings['b']"),
    ("2.0.0", lambda o: o.pop("encodings"), "'encodings'"),
    ("2.0.0", lambda o: o["encodings"][0].pop("y_scale"), "'y_scale'"),
    ("2.0.0", lambda o: o["encodings"][0].update(output_dtype="float8"), "'output_dtype'"),
    ("2.0.0", lambda o: o["encodings"][2].pop("axis"), "'axis'"),
    ("2.0.0", lambda o: o["encodings"][0].update(y_zero_point=[1, 2]), "'y_zero_point'"),
    ("2.0.0", lambda o: o["encodings"][0].update(y_zero_point=300), "'y_zero_point' 300"),
    ("2.0.0", lambda o: o["encodings"][1].update(block_size=32), "blockwise"),
]


@pytest.mark.parametrize("version, mutate, named", MALFORMED)
def test_malformed_inputs_name_the_problem(version, mutate, named):
    with pytest.raises(EncodingsError) as info:
        loads(_mutated(version, mutate))
    message = str(info.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize("text", ["", "[1, 2]", "{not json", b"\xff\xfe"])
def test_not_an_encodings_file(text):
    with pytest.raises(EncodingsError):
        loads(text)


def test_writer_rejects_bad_input():
    encs = golden_set()
    with pytest.raises(ValueError, match="version"):
        dumps(encs, version="1.1.0")
    with pytest.raises(ValueError, match="twice"):
        dumps(encs + [copy.copy(encs[0])])
    with pytest.raises(ValueError, match="kind"):
        TensorEncoding("x", encs[0].encoding, "weight")  # type: ignore[arg-type]
