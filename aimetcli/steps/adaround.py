"""AdaRound as a facade step: learn whether each weight rounds up or down for the quantization
quantsim will apply, and record the grids in the model (quantsim keeps them).

The technique is aimetcli/adaround.py's (moments in one onnxruntime graph, the rounding in
kernels/adaround.py); this step takes the model and data as every step does.
"""

from __future__ import annotations

from collections.abc import Callable

from aimetcli.adaround import AdaroundResult, LayerResult
from aimetcli.adaround import adaround as adaround_weights
from aimetcli.calibration.data import DataSource, as_dataset
from aimetcli.kernels.adaround import AdaroundParams
from aimetcli.model_ops import ModelSource, as_model
from aimetcli.options import QuantOptions, RunOptions


def adaround(model: ModelSource, data: DataSource, options: QuantOptions | None = None,
             run: RunOptions | None = None, *, params: AdaroundParams = AdaroundParams(), passes: int | None = None,
             on_layer: Callable[[LayerResult], None] | None = None,
             quantized_inputs: bool = True) -> AdaroundResult:
    """AdaRound every quantized weight for quantsim with ``options`` (aimetcli/adaround.py has the
    keywords). An onnx-ir model is modified in place; the AdaRounded model is ``result.model``.
    ``run.progress`` is called with the number of samples read."""
    model = as_model(model, float32=True)
    options = options or QuantOptions()
    run = run or RunOptions()
    dataset = as_dataset(data, model)
    from aimetcli.seqmse import apply_weight_range

    apply_weight_range(model, dataset, options, run, on_grid=False)  # --weight-range mse: AdaRound on those grids
    result = adaround_weights(model, dataset, options, batch_size=run.batch_size, params=params,
                              passes=passes, progress=run.progress, on_layer=on_layer,
                              quantized_inputs=quantized_inputs)
    result.model = model
    return result
