"""Loading and saving models: paths or '-', external data, atomic writes.

Rules every command relies on:

* the input is read whole (or memory-mapped for external data) and never written;
* an output is first written into a private temporary directory beside its final
  place, then moved there with ``os.replace``: a failure or Ctrl-C leaves either
  the old file or nothing, never a partial file;
* models whose tensors exceed protobuf's 2 GB limit (or when asked) are saved with
  their tensors in one external data file ``<output name>.data`` beside the model.

Big weights are never copied through protobuf: on load they become numpy views of
the bytes read (see proto_wire.py), on save they are written from their
arrays between the serialized pieces of the rest of the model (``big_tensors.serialize_chunks``).
The bytes written are exactly those ``SerializeToString`` would produce.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from aimetcli import proto_wire as wire
from aimetcli.bn_stats import store_bn_stats
from aimetcli.big_tensors import serialize_chunks, tensor_bytes
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.paths import (  # noqa: F401  (re-exported)
    STDIO, check_input_model, check_output_dir, check_output_path, probe_writable,
)
EXTERNAL_META = "aimetcli.loaded_with_external_data"
IN_MEMORY_LIMIT = 2**31 - 256 * 2**20
SHAPES_META = "aimetcli.shapes_inferred"
PROTOBUF_LIMIT = 2**31 - 1
# Leave room for the graph structure next to the tensors.
_EXTERNAL_THRESHOLD = PROTOBUF_LIMIT - 64 * 2**20
_PREALLOCATE = 2**20  # outputs from this size get their disk blocks reserved before the write


@dataclass
class LoadedModel:
    model: ir.Model
    source: str  # path as given, or '-'


def _read_source_bytes(source: str) -> bytes:
    if source == STDIO:
        data = sys.stdin.buffer.read()
        if not data:
            raise AimetCliError("standard input is empty: pipe an ONNX model into '-' or give a path")
        return data
    check_input_model(source)
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AimetCliError(f"{source}: cannot be read ({exc.strerror}); check its permissions") from exc
    if not data:
        raise AimetCliError(f"{source}: file is empty; give a non-empty .onnx file")
    return data


def _parse(data: bytes, source: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise AimetCliError(
            f"{source}: not an ONNX model (protobuf parse failed: the file is truncated or of another "
            "format); export the model to .onnx again"
        ) from exc
    if not proto.HasField("graph") or (len(proto.graph.node) == 0 and len(proto.graph.output) == 0):
        raise AimetCliError(f"{source}: not an ONNX model (no graph found); give an .onnx file")
    if not proto.opset_import:
        raise AimetCliError(f"{source}: the model declares no opset; re-export it with an opset_import")
    return proto


def _has_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _check(data: bytes, proto: onnx.ModelProto, source: str) -> None:
    """onnx.checker on the model's bytes (``proto`` is their parse, perhaps without big weights)."""
    try:
        if _has_external_data(proto) and source != STDIO:
            onnx.checker.check_model(source)
        else:
            onnx.checker.check_model(data)  # the bytes in hand: no re-serialization of the proto
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AimetCliError(
            f"{source}: the model fails onnx.checker ({first}); fix or re-export the model"
        ) from exc
    except (ValueError, OSError) as exc:
        raise AimetCliError(f"{source}: the model fails onnx.checker ({exc}); fix or re-export the model") from exc


def _infer_shapes_in_place(proto: onnx.ModelProto) -> None:
    """onnx shape inference, without copying the weights through it.

    Large initializers' bytes are set aside while inference runs (only their dims and
    type matter; small ones stay, for data propagation of shapes), then put back;
    the inferred value_info is copied into ``proto``.
    """
    stash = {}
    for i, t in enumerate(proto.graph.initializer):
        if t.HasField("raw_data") and len(t.raw_data) > wire.SMALL_TENSOR:
            stash[i] = t.raw_data
            t.ClearField("raw_data")
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    finally:
        for i, data in stash.items():
            proto.graph.initializer[i].raw_data = data
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(inferred.graph.value_info)
    for out, inf in zip(proto.graph.output, inferred.graph.output):
        if not out.type.tensor_type.HasField("shape") and inf.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inf.type)


def _attach_raw_data(model: ir.Model, data: bytes, split: wire.Split) -> bool:
    """Give the lifted-out initializers their bytes back, as read-only views of ``data``.

    False (the model untouched) when the initializers' names are not unique, so that
    which tensor a name stands for is left to the plain path.
    """
    initializers = model.graph.initializers
    if len(initializers) != split.initializers or any(initializers.get(t.name) is None for t in split.tensors):
        return False
    for t in split.tensors:
        array = np.frombuffer(data, t.dtype, math.prod(t.dims), t.offset).reshape(t.dims)
        initializers[t.name].const_value = ir.Tensor(array, name=t.name)
    return True


def load_model(source: str, *, check: bool = True) -> LoadedModel:
    """Load an ONNX model from a path or '-' (stdin) into onnx-ir.

    External data is resolved relative to the model's directory and memory-mapped.
    Big weights stored in the file become read-only numpy views of the bytes read.
    """
    data = _read_source_bytes(source)
    split = wire.split_raw_data(data) if len(data) >= wire.MIN_MODEL_BYTES else None
    if split is not None:
        model = _load(data, split, source, check)
        if model is not None:
            return LoadedModel(model=model, source=source)
    model = _load(data, None, source, check)
    assert model is not None
    return LoadedModel(model=model, source=source)


def _load(data: bytes, split: wire.Split | None, source: str, check: bool) -> ir.Model | None:
    """The model of ``data``; from ``split.rest`` and views of ``data`` when ``split`` is given.

    None when ``split`` does not fit what was parsed (the caller loads the plain way).
    """
    if split is not None:
        try:
            proto = _parse(split.rest, source)
        except AimetCliError:  # let the whole file's parse report it
            return None
    else:
        proto = _parse(data, source)
    external = _has_external_data(proto)
    if external and source == STDIO:
        raise AimetCliError(
            "a model with external data cannot be read from standard input; pass its path instead"
        )
    if check:
        _check(split.for_checker if split is not None else data, proto, source)
    shapes = False
    if not external:
        try:  # on the protobuf in hand: far cheaper than a pass that converts the model out and back
            _infer_shapes_in_place(proto)
            shapes = True
        except Exception:  # noqa: BLE001 - prepare() retries and reports
            pass
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx-ir rejects some malformed protos the checker lets through
        raise AimetCliError(f"{source}: the model cannot be read ({exc}); fix or re-export it") from exc
    del proto
    if split is not None and not _attach_raw_data(model, data, split):
        return None
    # an external tensor names its file under the key "location": without those bytes there is
    # none, and the walk over every tensor of every subgraph can be skipped
    if source != STDIO and (split is None or b"location" in split.rest):
        ir.external_data.set_base_dir(model.graph, os.path.dirname(os.path.abspath(source)))
    if shapes:
        model.meta[SHAPES_META] = True
    if external:
        # saved the same way unless asked otherwise: a model kept beside its data stays so
        model.meta[EXTERNAL_META] = True
        try:
            if tensor_bytes(model) <= IN_MEMORY_LIMIT:
                # below the protobuf limit the tensors are read now, so every serialization (for
                # onnxruntime, for copies) is self-contained; above it they stay memory-mapped
                ir.external_data.load_to_model(model)
            else:
                _map_copy_on_write(model)
        except (OSError, ValueError) as exc:
            raise AimetCliError(f"{source}: its external data cannot be read ({exc}); keep the .data file "
                                "beside the model") from exc
    return model


def _map_copy_on_write(model: ir.Model) -> None:
    """Map the main graph's external tensors privately (copy-on-write) instead of read-only.

    A pass may then rescale such a weight in place: the pages it writes become the process's
    own and the file never changes, so the weight is held once (a read-only map made passes
    copy it, doubling the peak memory: docs/design.md). Types numpy has no
    dtype for (4-bit, float8, ...) stay as onnx-ir maps them.
    """
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor) or tensor.size == 0:
            continue
        try:
            dtype = np.dtype(tensor.dtype.numpy()).newbyteorder("<")
        except (TypeError, ValueError):
            continue
        if dtype.kind not in "fiub" or dtype.itemsize * tensor.size != tensor.nbytes:
            continue
        array = np.memmap(tensor.path, dtype=dtype, mode="c", offset=tensor.offset or 0,
                          shape=tuple(tensor.shape.numpy()))
        value.const_value = ir.Tensor(array.view(np.ndarray), name=tensor.name, doc_string=tensor.doc_string,
                                      metadata_props=tensor.metadata_props)


@contextlib.contextmanager
def staged_dir(final_dir: Path) -> Iterator[Path]:
    """A temporary directory beside ``final_dir``'s files, removed on any exit."""
    tmp = Path(tempfile.mkdtemp(prefix=".aimetcli-", dir=final_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit_staged(tmp: Path, final_dir: Path, names: list[str]) -> None:
    """Move staged files into place; data files first so a model never points at nothing."""
    for name in sorted(names, key=lambda n: n.endswith(".onnx")):
        os.replace(tmp / name, final_dir / name)


def canonical_order(model: ir.Model) -> None:
    """Order the main graph's initializers by first use (node order), then by name.

    The same model then serializes to the same bytes however it was produced
    (``fold-bn | equalize`` or ``equalize`` alone), whatever order passes added them in.
    """
    graph = model.graph
    position: dict[str, int] = {}
    for i, node in enumerate(graph):
        for v in node.inputs:
            if v is not None and v.name is not None and v.name not in position:
                position[v.name] = i
    items = sorted(graph.initializers.items(), key=lambda kv: (position.get(kv[0], len(position) + 1), kv[0]))
    if [k for k, _ in items] != list(graph.initializers):
        for name, _ in items:
            value = graph.initializers.pop(name)
            graph.initializers[name] = value


def serialize(model: ir.Model) -> bytes:
    """The model's bytes as saved (its in-memory BN statistics stored first), without reordering."""
    store_bn_stats(model)
    # ONNX messages have no map fields, so plain serialization is already byte-stable
    return b"".join(serialize_chunks(model))


def save_model(model: ir.Model, dest: str, *, external_data: bool | None = None) -> list[str]:
    """Save atomically to a path or '-' (stdout). Returns the paths written.

    ``external_data=None`` decides: external when the model was loaded with external
    data or is over the protobuf limit.
    """
    needs_external = tensor_bytes(model) > _EXTERNAL_THRESHOLD
    if external_data is None:
        external_data = bool(model.meta.get(EXTERNAL_META, False))
    use_external = external_data or needs_external
    if dest == STDIO:
        if needs_external:
            raise AimetCliError(
                "the model is larger than 2 GB and needs external data, which cannot go to standard "
                "output; give an output path with -o",
                ErrorKind.USAGE,
            )
        canonical_order(model)
        store_bn_stats(model)
        for chunk in serialize_chunks(model):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return [STDIO]
    check_output_path(dest)
    path = Path(dest)
    final_dir = path.parent if str(path.parent) else Path(".")
    with staged_dir(final_dir) as tmp:
        written = write_model_file(model, tmp / path.name, external_data=use_external)
        commit_staged(tmp, final_dir, written)
    return [str(final_dir / n) for n in written]


def write_model_file(model: ir.Model, path: Path, *, external_data: bool | None = None) -> list[str]:
    """Write a model file (and its '.data' file) in place; callers stage it. Returns file names."""
    use_external = external_data if external_data is not None else tensor_bytes(model) > _EXTERNAL_THRESHOLD
    canonical_order(model)
    store_bn_stats(model)
    names = [path.name]
    try:
        if use_external:
            data_name = path.name + ".data"
            ir.save(model, path, external_data=data_name)
            names.append(data_name)
        else:
            chunks = serialize_chunks(model)
            with open(path, "wb") as f:
                size = sum(memoryview(c).nbytes for c in chunks)
                if size >= _PREALLOCATE and hasattr(os, "posix_fallocate"):
                    # blocks reserved up front: the write, and the writeback that replacing an
                    # existing file starts (ext4), cost less than with delayed allocation
                    # (docs/design.md, "Measurements behind code choices")
                    try:
                        os.posix_fallocate(f.fileno(), 0, size)
                    except OSError as exc:  # out of space is reported; anything else only costs speed
                        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                            raise
                for chunk in chunks:
                    f.write(chunk)
    except OSError as exc:
        raise AimetCliError(f"{path.name}: cannot be written ({exc.strerror}); free space or choose another path",
                            ErrorKind.OUTPUT) from exc
    except ValueError as exc:  # protobuf refuses > 2 GB
        raise AimetCliError(f"{path.name}: cannot be serialized ({exc}); use --external-data",
                            ErrorKind.OUTPUT) from exc
    return names


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    """Write a small file (encodings, reports, plots) with the same atomic rule."""
    final_dir = dest.parent if str(dest.parent) else Path(".")
    with staged_dir(final_dir) as tmp:
        (tmp / dest.name).write_bytes(data)
        commit_staged(tmp, final_dir, [dest.name])


def write_text_atomic(dest: Path, text: str) -> None:
    write_bytes_atomic(dest, text.encode())
