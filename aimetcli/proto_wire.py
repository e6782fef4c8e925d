"""Just enough of protobuf's wire format to keep big tensors' bytes out of protobuf.

Protobuf copies every bytes field it parses or serializes, and each copy of a big
model is mostly page faults on fresh memory. So model_io loads big plain
initializers (dims, data_type, name and raw_data, nothing else) as numpy views of
the file's bytes, and only the rest of the model goes through protobuf; on save,
big numpy-backed initializers are serialized empty and their bytes are spliced in
at the raw_data field. Protobuf writes fields in field-number order, so the spliced
bytes are those SerializeToString would give. Any layout not understood here
raises WireError, and the caller takes the plain path (parse or serialize all).
No onnx-ir here: bytes in, bytes (and offsets) out.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx

# Tensors up to this size keep their bytes in the protobuf given to shape inference (its
# data propagation reads small constants such as Reshape shapes); bigger ones never do.
SMALL_TENSOR = 4096
# Models (file bytes on load, initializer bytes on save) below this size take the plain
# protobuf path: there both paths cost the same (docs/design.md, "Loading and saving").
MIN_MODEL_BYTES = 1 << 20

class WireError(ValueError):
    pass


GRAPH_FIELD = 7  # ModelProto.graph
INITIALIZER_FIELD = 5  # GraphProto.initializer
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA = 1, 2, 8, 9  # TensorProto fields
_LEN = 2  # length-delimited wire type
# TensorProto.data_type -> little-endian numpy dtype, for the types numpy holds as is
RAW_DTYPES = {
    onnx.TensorProto.FLOAT: np.dtype("<f4"), onnx.TensorProto.DOUBLE: np.dtype("<f8"),
    onnx.TensorProto.FLOAT16: np.dtype("<f2"), onnx.TensorProto.INT8: np.dtype("i1"),
    onnx.TensorProto.UINT8: np.dtype("u1"), onnx.TensorProto.INT16: np.dtype("<i2"),
    onnx.TensorProto.UINT16: np.dtype("<u2"), onnx.TensorProto.INT32: np.dtype("<i4"),
    onnx.TensorProto.UINT32: np.dtype("<u4"), onnx.TensorProto.INT64: np.dtype("<i8"),
    onnx.TensorProto.UINT64: np.dtype("<u8"),
}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, field end) of each field of buf[start:end]."""
    pos = start
    while pos < end:
        first = pos
        key = buf[pos]
        if key < 0x80:  # one-byte varints inline: nearly every key and length here
            pos += 1
        else:
            key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == _LEN:
            n = buf[pos] if pos < end else 0x80
            if n < 0x80:
                pos += 1
            else:
                n, pos = _varint(buf, pos)
            stop = pos + n
        elif wire == 0:
            _, stop = _varint(buf, pos)
        elif wire == 1:
            stop = pos + 8
        elif wire == 5:
            stop = pos + 4
        else:  # groups: not in ONNX
            raise WireError(f"wire type {wire}")
        if key < 8 or stop > end:
            raise WireError("truncated field")
        yield key >> 3, wire, first, pos, stop
        pos = stop


@dataclass
class RawTensor:
    name: str
    data_type: int  # TensorProto.DataType
    dims: tuple[int, ...]
    offset: int  # of the tensor's bytes in the file

    @property
    def dtype(self) -> np.dtype:
        return RAW_DTYPES[self.data_type]


@dataclass
class Split:
    rest: bytes  # the model with the big tensors' raw_data fields left out
    for_checker: bytes  # the same with those tensors empty (dims [0]): what onnx.checker is given
    tensors: list[RawTensor]
    initializers: int  # how many initializers the main graph lists


def plain_tensor(buf: bytes, start: int, end: int) -> tuple[RawTensor, int, int] | None:
    """(tensor, raw_data field start, end) when the initializer's bytes can be lifted out."""
    dims: list[int] = []
    name = data_type = raw = None
    plain = True
    for number, wire, first, value, stop in fields(buf, start, end):
        if number == _NAME and wire == _LEN:
            plain = plain and name is None
            name = buf[value:stop].decode("utf-8")  # the last one counts, as in protobuf
        elif number == _DIMS and wire == 0:
            dims.append(_varint(buf, value)[0])
        elif number == _DIMS and wire == _LEN:
            pos = value
            while pos < stop:
                d, pos = _varint(buf, pos)
                dims.append(d)
        elif number == _DATA_TYPE and wire == 0 and data_type is None:
            data_type = _varint(buf, value)[0]
        elif number == _RAW_DATA and wire == _LEN and raw is None:
            raw = (first, value, stop)
        else:
            plain = False
    if not plain or raw is None or not name or data_type not in RAW_DTYPES or any(d >= 2**63 for d in dims):
        return None
    dtype = RAW_DTYPES[data_type]
    first, value, stop = raw
    size = stop - value
    if size <= SMALL_TENSOR or size != math.prod(dims) * dtype.itemsize:
        return None
    return RawTensor(name, data_type, tuple(dims), value), first, stop


def split_raw_data(data: bytes) -> Split | None:
    """The model's bytes without its big plain initializers' data, and where that data is.

    None when there is nothing to lift out or the layout is not one handled here.
    """
    if sys.byteorder != "little":
        return None
    try:
        graphs = [f for f in fields(data, 0, len(data)) if f[0] == GRAPH_FIELD]
        if len(graphs) != 1 or graphs[0][1] != _LEN:
            return None
        _, _, graph_first, graph_start, graph_end = graphs[0]
        pieces: list[bytes] = []
        checked: list[bytes] = []
        tensors: list[RawTensor] = []
        count = 0
        pos = graph_start
        for number, wire, first, value, stop in fields(data, graph_start, graph_end):
            if number != INITIALIZER_FIELD or wire != _LEN:
                continue
            count += 1
            if stop - value <= SMALL_TENSOR:  # too small to hold a lifted tensor: not looked into
                continue
            lifted = plain_tensor(data, value, stop)
            if lifted is None:
                continue
            tensor, raw_first, raw_stop = lifted
            between = data[pos:first]
            pieces += [between, length_delimited(INITIALIZER_FIELD, data[value:raw_first] + data[raw_stop:stop])]
            # For onnx.checker the tensor is an empty one of its name and type. Its bytes were
            # checked above as the checker would (a known numeric type, one raw_data of exactly
            # prod(dims) elements, nothing else), so the checker passes or fails as on the file,
            # without copying all weights into C++ first.
            empty = (encode_varint(_DIMS << 3) + b"\x00" + encode_varint(_DATA_TYPE << 3)
                     + encode_varint(tensor.data_type) + length_delimited(_NAME, tensor.name.encode()))
            checked += [between, length_delimited(INITIALIZER_FIELD, empty)]
            tensors.append(tensor)
            pos = stop
    except (WireError, IndexError, UnicodeDecodeError):
        return None
    if not tensors:
        return None

    def model_bytes(graph_pieces: list[bytes]) -> bytes:
        graph = b"".join([*graph_pieces, data[pos:graph_end]])
        return b"".join([data[:graph_first], length_delimited(GRAPH_FIELD, graph), data[graph_end:]])

    return Split(model_bytes(pieces), model_bytes(checked), tensors, count)


def length_delimited(field: int, payload: bytes) -> bytes:
    return encode_varint(field << 3 | _LEN) + encode_varint(len(payload)) + payload


def splice(head: bytes, slots: list[np.ndarray | None]) -> list:
    """Put each streamed tensor's bytes in place of its empty raw_data field in ``head``."""
    graphs = [f for f in fields(head, 0, len(head)) if f[0] == GRAPH_FIELD]
    if len(graphs) != 1:
        raise WireError("graph")
    _, _, graph_first, graph_start, graph_end = graphs[0]
    graph: list = []
    pos, k = graph_start, 0
    empty_raw = encode_varint(_RAW_DATA << 3 | _LEN) + b"\x00"
    for number, wire, first, value, stop in fields(head, graph_start, graph_end):
        if number != INITIALIZER_FIELD:
            continue
        if k >= len(slots):
            raise WireError("initializer count")
        data, k = slots[k], k + 1
        if data is None:
            continue
        raws = [(f, e) for n, _, f, v, e in fields(head, value, stop) if n == _RAW_DATA]
        if len(raws) != 1 or head[raws[0][0]:raws[0][1]] != empty_raw:
            raise WireError("raw_data")
        raw_first, raw_stop = raws[0]
        before, after = head[value:raw_first], head[raw_stop:stop]
        raw_head = encode_varint(_RAW_DATA << 3 | _LEN) + encode_varint(data.nbytes)
        size = len(before) + len(raw_head) + data.nbytes + len(after)
        graph += [head[pos:first], encode_varint(INITIALIZER_FIELD << 3 | _LEN) + encode_varint(size) + before
                  + raw_head, data, after]
        pos = stop
    if k != len(slots):
        raise WireError("initializer count")
    graph.append(head[pos:graph_end])
    graph_size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in graph)
    return [head[:graph_first] + encode_varint(GRAPH_FIELD << 3 | _LEN) + encode_varint(graph_size), *graph,
            head[graph_end:]]
