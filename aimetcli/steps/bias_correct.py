"""bias correction as a facade step: correct a float model's biases for the quantization quantsim
will apply, and record the options it was corrected for in the model.

The technique is aimetcli/bias_correction.py's; quantsim warns when a model was corrected for
other options (:func:`aimetcli.steps.quantsim.bias_correction_mismatch`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from aimetcli.bias_correction import METADATA_KEY, correct_biases
from aimetcli.calibration.data import DataSource, as_dataset
from aimetcli.kernels.quant import Encoding
from aimetcli.model_ops import ModelSource, as_model, require_float_model
from aimetcli.options import QuantOptions, RunOptions
from aimetcli.records import jsonable


@dataclass
class BiasCorrectSummary:
    method: str
    options: dict
    corrected: list
    skipped: list
    runs: int  # onnxruntime runs of the correction model (one per chunk of data)
    grids_in_run: bool  # activation grids computed in the run, after every upstream correction
    samples: int
    seconds: float
    model: ir.Model | None = field(default=None, repr=False)  # the corrected model; not in the JSON

    @property
    def mean_shift_before(self) -> float:
        import numpy as np

        vals = [c.shift_before for c in self.corrected if c.method == "empirical"]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def mean_shift_after(self) -> float:
        import numpy as np

        vals = [c.shift_after for c in self.corrected if c.method == "empirical" and c.shift_after is not None]
        return float(np.mean(vals)) if vals else float("nan")

    def to_json(self) -> dict:
        doc = jsonable(self)
        doc["skipped"] = [{"layer": a, "reason": b} for a, b in self.skipped]
        for key in ("mean_shift_before", "mean_shift_after"):
            v = getattr(self, key)
            doc[key] = None if v != v else v
        for row in doc["corrected"]:
            for key in ("shift_before", "shift_after"):
                if row[key] is not None and row[key] != row[key]:
                    row[key] = None
        return doc


def bias_correct(model: ModelSource, data: DataSource | None, options: QuantOptions | None = None,
                 run: RunOptions | None = None, *, method: str = "hybrid",
                 activation_grids: Mapping[str, Encoding | None] | None = None) -> BiasCorrectSummary:
    """Correct biases for the quantization quantsim applies with ``options``; records them in the
    model. ``data``: a Dataset, a path / 'random:N' opened for the model's inputs, or None for
    ``method="analytical"``. An onnx-ir model is modified in place; the corrected model is
    ``summary.model``. ``activation_grids``: the activation grids of quantsim's sim of ``model``
    with ``options``, already calibrated (ptq's incumbent), for the correction run instead of a
    calibration on ``data`` (``bias_correction.correct_biases``)."""
    start = time.perf_counter()
    model = as_model(model, float32=True)
    options = options or QuantOptions()
    run = run or RunOptions()
    dataset = as_dataset(data, model) if data is not None else None
    require_float_model(model)
    if dataset is not None:
        from aimetcli.seqmse import apply_weight_range

        apply_weight_range(model, dataset, options, run)  # --weight-range mse: corrected for the frozen grids
    result = correct_biases(model, dataset, options, method=method, batch_size=run.batch_size,
                            progress=run.progress, activation_grids=activation_grids)
    record = options.as_record()
    model.metadata_props[METADATA_KEY] = json.dumps({"method": method, "options": record}, sort_keys=True)
    return BiasCorrectSummary(method, record, result.corrected, result.skipped, result.runs, result.grids_in_run,
                              dataset.num_samples if dataset is not None else 0, time.perf_counter() - start,
                              model)
