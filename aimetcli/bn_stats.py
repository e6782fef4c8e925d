"""BatchNorm statistics carried inside the model after folding.

AIMET forgets the folded BN parameters once they are in the weights, so a later,
separate equalize cannot do high-bias absorption and a later bias correction
cannot be analytical. We keep them with the model.

Saved form, in the model's ``metadata_props``:

    key   "aimetcli.bn_stats"
    value JSON {"version": 1,
                "layers": {"<layer output tensor name>":
                              {"bn": "<folded BN node name>",
                               "beta": per output channel, "gamma": per output channel}}}

beta and gamma are written as base64 of little-endian float64 (exact); the reader
also accepts plain JSON lists of numbers (files written by hand or by older tools).

During a run the statistics live in the in-memory model, in ``model.meta`` (which
onnx-ir never serializes): :func:`read_bn_stats` parses ``metadata_props`` the first
time it is asked (and again only if that entry is replaced from outside), and
:func:`write_bn_stats` changes the in-memory copy only, leaving an empty placeholder
value in ``metadata_props`` (it keeps the entry's place among the other keys, and a
model serialized by other means carries no stale numbers: an empty entry reads as no
statistics). :func:`store_bn_stats`, called by ``model_io`` when it saves, writes the
JSON once. A step that copies a model through serialization passes the in-memory
statistics on with :func:`carry_bn_stats`.

The layer output of a backward fold (layer -> BN) is distributed per channel as
N(beta, gamma^2) on the training data. Passes that rescale a layer's output
channels (cross-layer scaling, high-bias absorption) update the entry, so it
always describes the layer as it is in the model. Keys are tensor names because
they are unique and survive a save/load; after a fold the layer output carries
the BN's former output name.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

METADATA_KEY = "aimetcli.bn_stats"
FORMAT_VERSION = 1
# metadata_props value while the statistics in model.meta are newer than any saved form
PENDING = ""


@dataclass(frozen=True)
class BnStats:
    beta: np.ndarray  # float64, per output channel
    gamma: np.ndarray  # float64, per output channel (sign kept; |gamma| is the std)
    bn: str = ""


@dataclass(frozen=True)
class _Carried:
    """The statistics of a model in memory, and the ``metadata_props`` value they stand for:
    the text they were parsed from or last stored as, PENDING when changed since, None when
    there is no entry."""

    stats: Mapping[str, BnStats]
    text: str | None


def read_bn_stats(model: ir.Model) -> dict[str, BnStats]:
    """The model's statistics (a new dict: change it, then :func:`write_bn_stats`)."""
    text = model.metadata_props.get(METADATA_KEY)
    carried = model.meta.get(METADATA_KEY)
    if not isinstance(carried, _Carried) or carried.text != text:
        carried = _Carried(_parse(text) if text else {}, text)
        model.meta[METADATA_KEY] = carried
    return dict(carried.stats)


def write_bn_stats(model: ir.Model, stats: Mapping[str, BnStats]) -> None:
    """Make ``stats`` the model's statistics, in memory; saving the model stores them."""
    if stats:
        model.metadata_props[METADATA_KEY] = PENDING
        model.meta[METADATA_KEY] = _Carried(dict(stats), PENDING)
    else:
        model.metadata_props.pop(METADATA_KEY, None)
        model.meta[METADATA_KEY] = _Carried({}, None)


def store_bn_stats(model: ir.Model) -> None:
    """Write the in-memory statistics into ``metadata_props`` if they changed since they were
    read or last stored (``model_io`` calls this when it saves a model)."""
    carried = model.meta.get(METADATA_KEY)
    if not isinstance(carried, _Carried) or carried.text != PENDING:
        return
    if model.metadata_props.get(METADATA_KEY) != PENDING:  # replaced from outside since: that wins
        return
    text = _serialize(carried.stats)
    model.metadata_props[METADATA_KEY] = text
    model.meta[METADATA_KEY] = _Carried(carried.stats, text)


def carry_bn_stats(source: ir.Model, dest: ir.Model) -> None:
    """Give ``dest``, a copy of ``source`` made through serialization, ``source``'s in-memory
    statistics (shared: they are never changed in place)."""
    carried = source.meta.get(METADATA_KEY)
    if isinstance(carried, _Carried):
        dest.meta[METADATA_KEY] = carried


def _parse(text: str) -> dict[str, BnStats]:
    try:
        doc = json.loads(text)
        layers = doc["layers"]
        return {name: BnStats(_decode(e["beta"]), _decode(e["gamma"]), e.get("bn", "")) for name, e in layers.items()}
    except (ValueError, KeyError, TypeError):
        # Stats are an optimisation; a damaged entry must not stop the command.
        return {}


def _serialize(stats: Mapping[str, BnStats]) -> str:
    doc = {
        "version": FORMAT_VERSION,
        "layers": {
            name: {"bn": s.bn, "beta": _encode(s.beta), "gamma": _encode(s.gamma)}
            for name, s in sorted(stats.items())
        },
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _encode(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, "<f8").tobytes()).decode("ascii")


def _decode(value) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), "<f8").astype(np.float64)
    return np.asarray(value, np.float64)
