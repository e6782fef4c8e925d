"""What a step is asked to do, as typed data: the quantization (with its loaded config), the
equalization switches, and how a step runs (batch size, progress).

Each option is a dataclass field with its default, written here once; the CLI's decorators
(aimetcli/commands/_options.py) fill them from the command line, and a library caller builds
them directly: ``QuantOptions(param_bw=4, per_channel=True, config=load_config("cfg.json"))``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aimetcli.kernels.quant import QuantScheme
from aimetcli.quantsim.config import QuantsimConfig, load_config
from aimetcli.quantsim.per_layer import BitsRule


class WeightRange(enum.Enum):
    """How the weights' ranges are chosen: MIN_MAX by ``scheme`` as every other range (quantsim's
    default), MSE by AIMET's SeqMSE, layer by layer against the layer's output error
    (aimetcli/seqmse.py), the grids then frozen in the model."""

    MIN_MAX = "minmax"
    MSE = "mse"


def _default_config() -> QuantsimConfig:
    return load_config(None)


@dataclass(frozen=True)
class QuantOptions:
    """What the user asked for on top of the config, and the config itself (AIMET's quantsim
    config JSON, parsed once: :func:`aimetcli.quantsim.config.load_config`; by default the one
    shipped). ``None`` for a granularity or symmetry: the config decides."""

    param_bw: int = 8
    act_bw: int = 8
    per_channel: bool | None = None  # None: the config decides
    param_symmetric: bool | None = None
    act_symmetric: bool | None = None
    scheme: QuantScheme = QuantScheme.MIN_MAX
    percentile: float = 99.99
    config: QuantsimConfig = field(default_factory=_default_config, repr=False, hash=False)
    # node names, globs, op types or tensor names kept float (aimetcli/quantsim/exclude.py)
    exclude: tuple[str, ...] = ()
    # per-layer bitwidths (aimetcli/quantsim/per_layer.py: BitsRule), later rules winning
    bits: tuple[BitsRule, ...] = ()
    # the runtime the sim is for (aimetcli/targets.py): its bitwidths and grids are checked
    target: str = "generic"
    weight_range: WeightRange = WeightRange.MIN_MAX

    def max_bitwidth(self) -> int:
        """The widest grid any quantizer gets (the sim's opset follows it)."""
        return max([self.param_bw, self.act_bw, *(b for r in self.bits for b in (r.param_bw, r.act_bw) if b)])

    def as_record(self) -> dict:
        """The options as recorded in a model and in report.json (the config by its source;
        ``exclude``, ``bits`` and ``target`` only when given, so that a default sim is what it was)."""
        record: dict[str, Any] = {
            "param_bw": self.param_bw, "act_bw": self.act_bw, "per_channel": self.per_channel,
            "param_symmetric": self.param_symmetric, "act_symmetric": self.act_symmetric,
            "scheme": self.scheme.value, "percentile": self.percentile, "config": self.config.source}
        if self.exclude:
            record["exclude"] = list(self.exclude)
        if self.bits:
            record["bits"] = [f"{r.pattern}={r.spec()}" for r in self.bits]
        if self.target != "generic":
            record["target"] = self.target
        if self.weight_range is not WeightRange.MIN_MAX:
            record["weight_range"] = self.weight_range.value
        return record


@dataclass
class EqualizeOptions:
    replace_relu6: bool = True  # Clip(0, a) -> Relu inside scaling chains
    high_bias_fold: bool = True
    cross_layer_scaling: bool = True  # False: only fold BN and replace ReLU6 (a reference for exactness tests)


@dataclass(frozen=True)
class RunOptions:
    """How a step runs, beside what it computes: ``batch_size`` samples per onnxruntime run
    (memory and speed; calibrated ranges do not depend on it), and ``progress``, called with the
    number of batches done as they finish; ``log``, called with a line per layer by the steps that
    work layer by layer (SeqMSE)."""

    batch_size: int = 32
    progress: Callable[[int], None] | None = None
    log: Callable[[str], None] | None = None


class AmpCost(enum.Enum):
    """What mixed precision's walk saves per step (steps/amp.py): BITOPS, each layer's MACs x
    weight bits x input bits (AIMET's MAC cost); ACTIVATIONS, the activation quantizers above the
    base bitwidth, each counted once (issue 19's "16-bit activations only where needed": a
    16-bit tensor costs its runtime the wide path wherever it goes, and most activations of a
    recognizer feed no weighted layer, so bit-ops gives them no saving at all)."""

    BITOPS = "bitops"
    ACTIVATIONS = "activations"


@dataclass(frozen=True)
class AmpOptions:
    """Mixed precision under a budget (``ptq --max-drop`` / ``--min-sqnr``; aimetcli/steps/amp.py).
    One budget: ``max_drop``, points of top-1 below FP32 on the labelled evaluation data, or
    ``min_sqnr``, dB of output SQNR against FP32 on the evaluation data (the calibration data
    when ptq has no ``--eval``). ``candidates``: each
    group's candidate bitwidths (``kernels.amp_search.Candidate``); empty: the base bitwidths,
    W8A8 and W8A16 where wider, and float (``default_candidates``). ``cost``: what the search
    saves (:class:`AmpCost`)."""

    max_drop: float | None = None
    min_sqnr: float | None = None
    candidates: tuple = ()
    cost: AmpCost = AmpCost.BITOPS

    def describe(self, judged_on: str = "evaluation") -> str:
        """The budget in words; ``judged_on``: the data an SQNR budget is measured on."""
        if self.max_drop is not None:
            return f"top-1 at most {self.max_drop:g} points below FP32 on the evaluation data"
        return f"output SQNR at least {self.min_sqnr:g} dB against FP32 on the {judged_on} data"
