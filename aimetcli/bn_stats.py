"""BatchNorm statistics carried inside the model after folding.

AIMET forgets the folded BN parameters once they are in the weights, so a later,
separate equalize cannot do high-bias absorption and a later bias correction
cannot be analytical. We keep them in the model's ``metadata_props``:

    key   "aimetcli.bn_stats"
    value JSON {"version": 1,
                "layers": {"<layer output tensor name>":
                              {"bn": "<folded BN node name>",
                               "beta": per output channel, "gamma": per output channel}}}

beta and gamma are written as base64 of little-endian float64 (exact, and a
hundred times faster to write than decimal lists, which matters on every pass of
a 50-layer model); the reader also accepts plain JSON lists of numbers.

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
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

METADATA_KEY = "aimetcli.bn_stats"
FORMAT_VERSION = 1


@dataclass
class BnStats:
    beta: np.ndarray  # float64, per output channel
    gamma: np.ndarray  # float64, per output channel (sign kept; |gamma| is the std)
    bn: str = ""



def read_bn_stats(model: ir.Model) -> dict[str, BnStats]:
    text = model.metadata_props.get(METADATA_KEY)
    if not text:
        return {}
    try:
        doc = json.loads(text)
        layers = doc["layers"]
        return {name: BnStats(_decode(e["beta"]), _decode(e["gamma"]), e.get("bn", "")) for name, e in layers.items()}
    except (ValueError, KeyError, TypeError):
        # Stats are an optimisation; a damaged entry must not stop the command.
        return {}


def write_bn_stats(model: ir.Model, stats: dict[str, BnStats]) -> None:
    if not stats:
        model.metadata_props.pop(METADATA_KEY, None)
        return
    doc = {
        "version": FORMAT_VERSION,
        "layers": {
            name: {"bn": s.bn, "beta": _encode(s.beta), "gamma": _encode(s.gamma)}
            for name, s in sorted(stats.items())
        },
    }
    model.metadata_props[METADATA_KEY] = json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _encode(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, "<f8").tobytes()).decode("ascii")


def _decode(value) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), "<f8").astype(np.float64)
    return np.asarray(value, np.float64)
