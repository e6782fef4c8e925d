"""onnxruntime sessions for calibration and evaluation, with errors turned into one line.

``optimization``: "none" (ORT_DISABLE_ALL: what equivalence tests need), "basic"
(constant folding only: QDQ pairs stay float emulation, exactly the simulation) or
"all" (what a deployment runs: QDQ becomes integer kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from aimetcli import big_tensors
from aimetcli.errors import AimetCliError, ErrorKind

Progress = Callable[[int], None]

_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def make_session(model: big_tensors.SplicedProto | bytes | str, *, optimization: str = "basic",
                 threads: int | None = None, keep_qdq: bool = False,
                 mem_pattern: bool = True) -> ort.InferenceSession:
    """``keep_qdq``: no QDQ rewrites even at "all" (QDQ pairs stay float: the simulation), other fusions on.

    ``mem_pattern=False`` for sessions that run a few big batches: onnxruntime's memory pattern
    is recorded in the first run and allocated as one new block in the second, so the second run
    pays again for first-touching all its memory (measured: bias correction of the full-size
    MobileNetV2 over 3 runs of 86 samples, 12-13 s -> 8.4 s, page faults 900k -> 580k).
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[optimization]
    so.enable_mem_pattern = mem_pattern
    if keep_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    try:
        if isinstance(model, big_tensors.SplicedProto):
            return _session_with_arrays(model, so)
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except AimetCliError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise AimetCliError(f"onnxruntime cannot load the model: {_first_line(exc)}", ErrorKind.RUNTIME) from exc


# Gemm/MatMul weights above this many bytes are not prepacked (see _session_with_arrays)
PREPACK_LIMIT = 64 << 20


def _session_with_arrays(model: big_tensors.SplicedProto, so: ort.SessionOptions) -> ort.InferenceSession:
    """The protobuf without its big tensors' data, and the arrays handed to onnxruntime beside it
    (no protobuf serialization or parse of their bytes: VGG19's 548 MB, 1.7-5.7 s -> 0.7-1.1 s a
    session). The session keeps them referenced.

    Where the model's Gemm/MatMul weights pass PREPACK_LIMIT, onnxruntime's prepacking (a packed
    copy of every such weight, made when the session starts) is off: our sessions run a few
    batches, and the copy costs more time and memory than it saves (VGG19 quantsim: 3.2 -> 2.2 s
    and 2.24 -> 1.96 GB with 2 samples, 5.8 -> 5.4 s with 32; the 2.25 GB Gemm chain: 25 -> 15 s,
    one weight copy less). Conv-heavy models keep it (MobileNetV2 is slower without it).

    Those big Gemm/MatMul weights also become graph inputs, fed with every run (:func:`run`):
    onnxruntime copies external initializers when the session starts (a 256 MB weight adds
    264 MB), but reads fed arrays where they are.
    """
    proto, names, arrays = model.declared_external()
    fed: dict[str, np.ndarray] = {}
    if names:
        big = dict(zip(names, arrays))
        readers = _readers(proto)
        matmul = {"Gemm", "MatMul"}
        if sum(a.nbytes for n, a in big.items() if readers.get(n, set()) & matmul) > PREPACK_LIMIT:
            so.add_session_config_entry("session.disable_prepacking", "1")
            fed = _feed_matmul_weights(proto, big, readers)
        kept = [(n, a) for n, a in zip(names, arrays) if n not in fed]
        if kept:
            so.add_external_initializers([n for n, _ in kept], [ort.OrtValue.ortvalue_from_numpy(a) for _, a in kept])
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    session._aimetcli_arrays = arrays  # onnxruntime reads them for the session's whole life
    session._aimetcli_fed = fed
    return session


def _readers(proto) -> dict[str, set[str]]:
    """Tensor name -> op types of the main graph's nodes that read it ("?" for other domains)."""
    readers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type if node.domain in ("", "ai.onnx") else "?")
    return readers


def _feed_matmul_weights(proto, arrays: dict[str, np.ndarray], readers: dict[str, set[str]]) -> dict[str, np.ndarray]:
    """Turn the set-aside weights that only Gemm/MatMul nodes read into graph inputs (in place in
    ``proto``); returns them by name, for :func:`run` to feed."""
    outputs = {o.name for o in proto.graph.output}
    fed = {name: arr for name, arr in arrays.items()
           if readers.get(name) and readers[name] <= {"Gemm", "MatMul"} and name not in outputs
           and arr.dtype == np.float32 and arr.flags.c_contiguous}
    if fed:
        keep = [t for t in proto.graph.initializer if t.name not in fed]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
        listed = {i.name for i in proto.graph.input}  # models before IR 4 list initializers as inputs
        for name, arr in fed.items():
            if name not in listed:
                proto.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, arr.shape))
    return fed


def session_of(model: ir.Model, **options) -> ort.InferenceSession:
    """A session of an onnx-ir model (``options`` as make_session); its big weights go to
    onnxruntime as the model's own arrays, not through protobuf (big_tensors.SplicedProto)."""
    return make_session(big_tensors.SplicedProto.of(model), **options)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


_FLOAT_INPUTS = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
                 "tensor(double)": np.dtype(np.float64)}


def _float_inputs(session: ort.InferenceSession) -> dict[str, np.dtype]:
    """The session's float inputs and their numpy types (cached on the session)."""
    known = getattr(session, "_aimetcli_float_inputs", None)
    if known is None:
        known = {i.name: _FLOAT_INPUTS[i.type] for i in session.get_inputs() if i.type in _FLOAT_INPUTS}
        session._aimetcli_float_inputs = known
    return known


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray],
        outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    """``feeds`` of another float type than a float input takes are converted (models compared on
    the same data need not agree on it: a float16 model and its float32 sim)."""
    floats = _float_inputs(session)
    if any(k in floats and v.dtype != floats[k] and v.dtype.kind == "f" for k, v in feeds.items()):
        feeds = {k: v.astype(floats[k]) if k in floats and v.dtype.kind == "f" else v for k, v in feeds.items()}
    fed = getattr(session, "_aimetcli_fed", None)
    if fed:
        feeds = {**feeds, **fed}
    try:
        return session.run(list(outputs) if outputs is not None else None, feeds)
    except Exception as exc:
        raise AimetCliError(f"onnxruntime failed while running the model: {_first_line(exc)}",
                            ErrorKind.RUNTIME) from exc
