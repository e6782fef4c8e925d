"""Big weights kept out of protobuf: a model's serialization that does not copy them, and
``SplicedProto``, the protobuf of a model with its big initializers set aside, for graphs
handed to onnxruntime.

Python's protobuf copies every bytes field it serializes (what that costs on big models:
docs/design.md, "Loading and saving"). :func:`big_tensors_set_aside` swaps the main graph's big numpy-backed
initializers for empty arrays of their shape while a model is serialized;
:func:`serialize_chunks` then splices their bytes back between the serialized pieces
(``proto_wire.splice``), so ``b"".join`` of the chunks is exactly what
``SerializeToString`` would give; :class:`SplicedProto` keeps them beside the protobuf for
``runtime.Session`` instead (every graph aimetcli hands onnxruntime is an onnx-ir model, built
by graph_builder.py, and is serialized there, once). "Big" is ``proto_wire.SMALL_TENSOR``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from aimetcli import proto_wire as wire

_STREAMED_TYPES = {ir.DataType(k): v for k, v in wire.RAW_DTYPES.items()}


def _streamed_bytes(tensor: ir.TensorProtocol | None) -> np.ndarray | None:
    """The tensor's serialized bytes (a uint8 view, no copy) when it is big and numpy-backed."""
    if type(tensor) is not ir.Tensor or tensor.dtype not in _STREAMED_TYPES:
        return None
    array = tensor.raw
    if (not isinstance(array, np.ndarray) or array.dtype != _STREAMED_TYPES[tensor.dtype]
            or array.nbytes <= wire.SMALL_TENSOR):
        return None
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


@dataclass
class SetAside:
    """What :func:`big_tensors_set_aside` took out: the tensors by name; and per initializer that
    serializes (in order), its bytes (a uint8 view, no copy) or None where there is no numpy view
    (it stayed; with ``numpy_only=False`` it may also be set aside, and the serialization then
    cannot be spliced back together)."""

    slots: list[np.ndarray | None]
    tensors: dict[str, ir.TensorProtocol]


@contextlib.contextmanager
def big_tensors_set_aside(model: ir.Model, *, numpy_only: bool = True) -> Iterator[SetAside]:
    """While open, the main graph's big numpy-backed initializers (``numpy_only=False``: any
    big numeric ones) hold empty arrays of their shape, so a serialization of the model carries
    their dims and types but not their bytes. The tensors are back on exit.
    """
    streamed: list[tuple[ir.Value, ir.TensorProtocol]] = []
    taken = SetAside([], {})
    try:
        for name, value in model.graph.initializers.items():
            tensor = value.const_value
            if tensor is None:  # not serialized
                continue
            data = _streamed_bytes(tensor)
            taken.slots.append(data)
            if data is not None or (not numpy_only and tensor.dtype in _STREAMED_TYPES
                                    and tensor.nbytes > wire.SMALL_TENSOR):
                streamed.append((value, tensor))
                taken.tensors[name] = tensor
                value.const_value = ir.Tensor(np.empty(0, _STREAMED_TYPES[tensor.dtype]),
                                              shape=tensor.shape, name=tensor.name, doc_string=tensor.doc_string,
                                              metadata_props=tensor.metadata_props)
        yield taken
    finally:
        for value, tensor in streamed:
            value.const_value = tensor
            tensor.name = value.name  # as serialization does


def tensor_bytes(model: ir.Model) -> int:
    """Total bytes of the initializers of the main graph and its subgraphs."""
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def serialize_chunks(model: ir.Model) -> list:
    """The model's serialization as a list of bytes-like pieces (big tensors' arrays not copied,
    for models of ``proto_wire.MIN_MODEL_BYTES`` of tensors or more; smaller ones in one piece).

    ``b"".join`` of the pieces is ``ir.serde.serialize_model(model).SerializeToString()``.
    """
    if tensor_bytes(model) < wire.MIN_MODEL_BYTES:
        return [ir.serde.serialize_model(model).SerializeToString()]
    with big_tensors_set_aside(model) as taken:
        head = ir.serde.serialize_model(model).SerializeToString()
    if not taken.tensors:
        return [head]
    try:
        return wire.splice(head, taken.slots)
    except wire.WireError:  # not the layout expected: cannot happen, but the plain path is always right
        return [ir.serde.serialize_model(model).SerializeToString()]


@dataclass
class SplicedProto:
    """A ModelProto whose big initializers carry dims and type but no data, and their data beside
    it (initializer name -> numpy array): how ``runtime.Session`` serializes the onnx-ir model it
    is given.

    Protobuf copies every bytes field it touches, so the big arrays stay out of it and go to onnxruntime beside the protobuf
    (:meth:`declared_external`, ``runtime.Session``). ``arrays`` names only initializers whose
    ``raw_data`` is present and empty in ``proto``.
    """

    proto: onnx.ModelProto
    arrays: dict[str, np.ndarray]

    @classmethod
    def of(cls, model: ir.Model) -> SplicedProto:
        """The model's protobuf with every big numeric initializer set aside: its array (read
        through onnx-ir, so a memory-mapped external tensor is read here). Smaller initializers
        stay in the protobuf (those stored as external data are brought in)."""
        with big_tensors_set_aside(model, numpy_only=False) as taken:
            proto = ir.serde.serialize_model(model)
        arrays: dict[str, np.ndarray] = {}
        for tensor in proto.graph.initializer:
            big = taken.tensors.get(tensor.name)
            external = tensor.data_location == onnx.TensorProto.EXTERNAL
            if big is None and not external:
                continue
            # read through onnx-ir, which knows where a memory-mapped (external) tensor lives: a
            # small external tensor is brought into the protobuf, not left as a relative path
            source = big if big is not None else model.graph.initializers[tensor.name].const_value
            arr = np.asarray(source.numpy())
            if big is not None:
                arrays[tensor.name] = np.ascontiguousarray(arr, dtype=wire.RAW_DTYPES[tensor.data_type])
            else:
                tensor.CopyFrom(onnx.numpy_helper.from_array(arr, tensor.name))
        return cls(proto, arrays)

    def declared_external(self) -> tuple[onnx.ModelProto, list[str], list[np.ndarray]]:
        """A copy of the protobuf whose big initializers say their data is external (in no file),
        and those initializers' names and arrays: for onnxruntime's
        ``SessionOptions.add_external_initializers`` (which copies them when the session starts)
        or to be fed with each run (``runtime.Session``)."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        names, arrays = [], []
        for tensor in proto.graph.initializer:
            arr = self.arrays.get(tensor.name)
            if arr is None:
                continue
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", "aimetcli-in-memory"
            names.append(tensor.name)
            arrays.append(arr)
        return proto, names, arrays
