"""Phase two of quantsim: compute every quantizer's encoding.

Weights: from the weight itself (per channel on the placement's axis), with the
chosen scheme. Activations: one onnxruntime run over the calibration data of a
copy of the model whose weights are already fake-quantized (AIMET computes
activation encodings with its parameter quantizers on) and whose quantized
tensors are extra graph outputs; each batch updates a streaming observer per
tensor (min/max, or a 512-bin histogram for tf-enhanced and percentile), so
memory stays at one batch of activations whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from aimetcli import graph as g
from aimetcli.calibration import runner
from aimetcli.calibration.observers import EmptyObserverError, make_observer, observe_encoding
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.quant import Encoding, QuantScheme, encoding_from_range, fake_quantize
from aimetcli.quantsim.placement import Placement, QuantOptions


@dataclass
class Encodings:
    activations: dict[str, Encoding] = field(default_factory=dict)
    params: dict[str, Encoding] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)


def _scheme_for_params(opts: QuantOptions) -> QuantScheme:
    return opts.scheme


def param_encodings(model: ir.Model, placement: Placement, opts: QuantOptions) -> dict[str, Encoding]:
    out: dict[str, Encoding] = {}
    inits = model.graph.initializers
    for pq in placement.params:
        w = inits[pq.tensor].const_value.numpy().astype(np.float32)
        if not np.all(np.isfinite(w)):
            raise AimetCliError(
                f"{pq.kind} {pq.tensor!r} of a {pq.op} holds {int(np.count_nonzero(~np.isfinite(w)))} NaN/Inf "
                "values, which no quantization grid can represent; fix the model's weights", ErrorKind.INPUT)
        if pq.kind == "bias":
            lim = float(np.abs(w).max()) if w.size else 0.0
            out[pq.tensor] = encoding_from_range(-lim, lim, pq.bitwidth, True, min_range=0.0)
            continue
        observer = make_observer(_scheme_for_params(opts), axis=pq.axis)
        observer.update(w)
        out[pq.tensor] = observe_encoding(observer, _scheme_for_params(opts), pq.bitwidth, pq.symmetric,
                                          percentile=opts.percentile,
                                          strict_symmetric=placement.strict_symmetric and pq.symmetric)
    return out


def calibration_weights_proto(model: ir.Model, params: dict[str, Encoding]) -> onnx.ModelProto:
    """A protobuf copy of the model with its quantized weights fake-quantized."""
    proto = ir.serde.serialize_model(model)
    by_name = {t.name: i for i, t in enumerate(proto.graph.initializer)}
    for name, enc in params.items():
        idx = by_name[name]
        arr = numpy_helper.to_array(proto.graph.initializer[idx])
        fq = fake_quantize(arr.astype(np.float32), enc).astype(arr.dtype)
        proto.graph.initializer[idx].CopyFrom(numpy_helper.from_array(fq, name))
    return proto


def calibration_model(model: ir.Model, placement: Placement, params: dict[str, Encoding]) -> onnx.ModelProto:
    """A protobuf copy: weights fake-quantized, quantized activations exposed as outputs."""
    proto = calibration_weights_proto(model, params)
    outputs = {o.name for o in proto.graph.output}
    inputs = {i.name for i in proto.graph.input}
    elem = {}
    for value in (*model.graph.inputs, *(v for n in model.graph for v in n.outputs)):
        if value.dtype is not None:
            elem[value.name] = int(value.dtype)
    for aq in placement.activations:
        if aq.tensor in outputs or aq.tensor in inputs:
            continue
        proto.graph.output.append(onnx.helper.make_tensor_value_info(aq.tensor, elem.get(aq.tensor, 1), None))
        outputs.add(aq.tensor)
    return proto


def calibrate(model: ir.Model, placement: Placement, opts: QuantOptions, dataset, batch_size: int,
              progress: runner.Progress | None = None) -> Encodings:
    enc = Encodings(params=param_encodings(model, placement, opts))
    if not placement.activations:
        return enc
    proto = calibration_model(model, placement, enc.params)
    session = runner.make_session(proto, optimization="all")
    input_names = {i.name for i in session.get_inputs()}
    act = [a for a in placement.activations if a.tensor not in input_names]
    fed = [a for a in placement.activations if a.tensor in input_names]
    names = [a.tensor for a in act]
    observers = {a.tensor: make_observer(opts.scheme) for a in placement.activations}
    for feeds in dataset.batches(batch_size):
        for a in fed:
            observers[a.tensor].update(feeds[a.tensor])
        if names:
            values = runner.run(session, feeds, names)
            for name, value in zip(names, values):
                observers[name].update(value)
        if progress is not None:
            progress(1)
    for a in placement.activations:
        obs = observers[a.tensor]
        if getattr(obs, "nonfinite_count", 0):
            enc.nonfinite[a.tensor] = int(obs.nonfinite_count)
        if a.encoding_min is not None and a.encoding_max is not None:
            enc.activations[a.tensor] = encoding_from_range(a.encoding_min, a.encoding_max, a.bitwidth, a.symmetric,
                                                            strict_symmetric=placement.strict_symmetric and a.symmetric)
            continue
        try:
            enc.activations[a.tensor] = observe_encoding(
                obs, opts.scheme, a.bitwidth, a.symmetric, percentile=opts.percentile,
                strict_symmetric=placement.strict_symmetric and a.symmetric)
        except EmptyObserverError as exc:
            raise AimetCliError(
                f"calibration saw no finite value of tensor {a.tensor!r}; check the calibration data",
                ErrorKind.DATA) from exc
    return enc
