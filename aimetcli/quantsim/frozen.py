"""Weight grids an AdaRound run froze into a model: recorded in its metadata, read back by
quantsim (which keeps them where the weight options match) and by its warning when they do not.

aimetcli/adaround.py records them; quantsim/calibrate.py and steps/quantsim.py read them.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.kernels.quant import Encoding

METADATA_KEY = "aimetcli.adaround"


def record_frozen(model: ir.Model, encodings: dict[str, Encoding], options: dict) -> None:
    """Record the weights' grids (and the options they were made for) in the model."""
    doc = {"options": options, "encodings": {
        name: {"bitwidth": e.bitwidth, "symmetric": e.symmetric, "axis": e.axis,
               "scale": [float(x) for x in e.scale.reshape(-1)], "offset": [int(x) for x in e.offset.reshape(-1)],
               "per_channel": e.per_channel} for name, e in sorted(encodings.items())}}
    model.metadata_props[METADATA_KEY] = json.dumps(doc, sort_keys=True, separators=(",", ":"))


def frozen_record(model: ir.Model) -> tuple[dict[str, Encoding], dict] | None:
    """(weight name -> frozen Encoding, options record) from :func:`record_frozen`, or None."""
    text = model.metadata_props.get(METADATA_KEY)
    if not text:
        return None
    try:
        doc = json.loads(text)
        out = {}
        for name, e in doc["encodings"].items():
            shape = (-1,) if e["per_channel"] else ()
            out[name] = Encoding(e["bitwidth"], e["symmetric"], np.array(e["scale"], np.float32).reshape(shape),
                                 np.array(e["offset"], np.int64).reshape(shape), axis=e["axis"])
        return out, doc.get("options", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise AimetCliError(f"the model's {METADATA_KEY} record is unreadable ({exc}); AdaRound the model again",
                            ErrorKind.INPUT) from exc


def _matches(enc: Encoding, pq) -> bool:
    return enc.bitwidth == pq.bitwidth and enc.symmetric == pq.symmetric and enc.axis == pq.axis


def frozen_encodings(model: ir.Model, placement) -> dict[str, Encoding]:
    """The recorded grids of the weights ``placement`` quantizes with the same bitwidth, symmetry
    and channel axis (quantsim keeps these instead of computing grids from the rounded weights)."""
    record = frozen_record(model)
    if record is None:
        return {}
    frozen = record[0]
    return {pq.tensor: frozen[pq.tensor] for pq in placement.params
            if pq.kind == "weight" and pq.tensor in frozen and _matches(frozen[pq.tensor], pq)}


def frozen_mismatch(model: ir.Model, placement) -> str | None:
    """A warning when recorded grids are not kept because the weight options differ."""
    record = frozen_record(model)
    if record is None:
        return None
    frozen = record[0]
    other = [(pq, frozen[pq.tensor]) for pq in placement.params
             if pq.kind == "weight" and pq.tensor in frozen and not _matches(frozen[pq.tensor], pq)]
    if not other:
        return None
    pq, enc = other[0]

    def describe(bw, symmetric, axis) -> str:
        return f"{bw}-bit {'symmetric' if symmetric else 'asymmetric'} {'per-tensor' if axis is None else 'per-channel'}"

    return (f"the model was AdaRounded for other weight options ({len(other)} weights, e.g. {pq.tensor}: "
            f"{describe(enc.bitwidth, enc.symmetric, enc.axis)} recorded, {describe(pq.bitwidth, pq.symmetric, pq.axis)} "
            "asked): their grids are computed anew and the learned rounding is lost; rerun adaround with these options")
