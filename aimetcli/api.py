"""aimetcli's Python API: the facade every caller (the CLI, the tests, a library user) imports.

Only re-exports (the onnx-ir ``convenience`` module's pattern): the code lives in the modules
named below, and nothing inside the package imports this module but the CLI, so the facade
can never be a cycle's middle. docs/api.md has a runnable example per step.

Every step takes its model as a path, an ``onnx.ModelProto`` or an onnx-ir model; an onnx-ir
model is rewritten in place (quantsim returns its sim). Data are a Dataset or a spec (an .npz /
.npy path, an image folder, 'random:N'). What to quantize is a :class:`QuantOptions` (its
``config`` the parsed AIMET quantsim config); how to run, a :class:`RunOptions` (batch size,
progress). Each step returns a result dataclass with ``to_json()``; none prints.
"""

from __future__ import annotations

from aimetcli.adaround import AdaroundResult
from aimetcli.calibration.data import DataSource, Dataset, input_specs, open_data
from aimetcli.errors import AimetCliError
from aimetcli.export import ExportSummary, export
from aimetcli.kernels.adaround import AdaroundParams
from aimetcli.kernels.amp_search import Candidate
from aimetcli.kernels.quant import QuantScheme
from aimetcli.model_io import save_model as save
from aimetcli.model_ops import (
    ModelSource, PrepareReport, as_model, clone, load, prepare, require_float32, require_float_model, sim_opset,
    upgrade_opset,
)
from aimetcli.options import AmpOptions, EqualizeOptions, QuantOptions, RunOptions, WeightRange
from aimetcli.ptq_candidates import scheme_candidates
from aimetcli.ptq_flow import KeepVerdict, bias_correction_verdict, equalization_verdict, keep_verdict, ptq
from aimetcli.ptq_report import PtqSummary, Stage
from aimetcli.quantsim.config import QuantsimConfig, load_config
from aimetcli.quantsim.per_layer import BitsRule
from aimetcli.steps.adaround import adaround
from aimetcli.steps.amp import AmpResult, ParetoPoint
from aimetcli.steps.analyze import Analysis, QuantizerSensitivity, analyze
from aimetcli.steps.bias_correct import BiasCorrectSummary, bias_correct
from aimetcli.steps.evaluate import (
    EvaluateSummary, OutputComparison, compare_outputs, evaluate, model_outputs, score_output, sqnr_db,
    sqnr_of_energies,
)
from aimetcli.steps.quantsim import (
    QuantsimSummary, bias_correction_mismatch, encodings_json, quantizer_args, quantsim, simulate, tensor_encodings,
)
from aimetcli.steps.rewrite import EqualizeSummary, FoldBnSummary, LayerRanges, equalize, fold_bn, weight_ranges

__all__ = [
    # models in and out
    "ModelSource", "PrepareReport", "as_model", "clone", "load", "prepare", "require_float32",
    "require_float_model", "save", "sim_opset", "upgrade_opset",
    # data
    "DataSource", "Dataset", "input_specs", "open_data",
    # options and errors
    "AimetCliError", "BitsRule", "EqualizeOptions", "QuantOptions", "QuantScheme", "QuantsimConfig", "RunOptions",
    "WeightRange",
    "load_config",
    # the steps, in workflow order, and their results
    "FoldBnSummary", "fold_bn",
    "EqualizeSummary", "LayerRanges", "equalize", "weight_ranges",
    "AdaroundParams", "AdaroundResult", "adaround",
    "BiasCorrectSummary", "bias_correct",
    "QuantsimSummary", "bias_correction_mismatch", "encodings_json", "quantizer_args", "quantsim", "simulate",
    "tensor_encodings",
    "EvaluateSummary", "OutputComparison", "compare_outputs", "evaluate", "model_outputs", "score_output",
    "sqnr_db", "sqnr_of_energies",
    "ExportSummary", "export",
    "KeepVerdict", "PtqSummary", "Stage", "bias_correction_verdict", "equalization_verdict", "keep_verdict", "ptq",
    "scheme_candidates",
    "AmpOptions", "AmpResult", "Candidate", "ParetoPoint",
    "Analysis", "QuantizerSensitivity", "analyze",
]
