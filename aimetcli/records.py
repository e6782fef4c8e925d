"""Results as JSON: what every step's ``to_json()`` and the CLI's ``--json`` share.

Two rules, each written once: a result dataclass becomes a dict of its fields (numpy scalars as
Python numbers, a field named ``model`` left out: the model is the step's output, not its
report); and JSON has no inf/nan, so such numbers (the SQNR of identical outputs) become null.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON-ready Python values: dataclasses as dicts (without their ``model``),
    tuples as lists, dict keys as strings, numpy scalars as Python numbers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "model"}
    if isinstance(obj, (list, tuple)):
        return [jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return obj.item()
    return obj


def finite(obj: Any) -> Any:
    """``obj`` with every inf/nan float replaced by None (JSON's null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
