"""What ptq tries: the range schemes, whether per-channel weights are a candidate, whether
equalization and AdaRound are stages, whether the bias-corrected model is recalibrated (the rules
ptq_flow.py follows; the CLI and api read them too). All but the last two are known before
anything runs; equalization's reads the granularity the flow chose, recalibration's the
correction's bias moves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from aimetcli.graph import node_label
from aimetcli.kernels.quant import Encoding, QuantScheme
from aimetcli.layers import as_layer, bias_array
from aimetcli.quantsim.units import SAME_GRID_OPS


def scheme_candidates(options) -> tuple:
    """The range schemes ``ptq --quant-scheme auto`` tries, as AIMET's AutoQuant does in its
    'QuantScheme Selection' (min-max and tf-enhanced; AIMET keeps min-max where the bitwidth is
    16 or more, where the grid is fine enough that clipping cannot pay)."""
    if options.param_bw >= 16 and options.act_bw >= 16:
        return (QuantScheme.MIN_MAX,)
    return (QuantScheme.MIN_MAX, QuantScheme.TF_ENHANCED)


def per_channel_candidate(options) -> str | None:
    """None when per-channel weights are a candidate of ptq's choice, else why not: the user chose
    (``--per-channel`` / ``--per-tensor``) or the config sets ``per_channel_quantization`` (the
    target's runtime decides it there). With the default config, per-channel is allowed."""
    if options.per_channel is not None:
        return f"--{'per-channel' if options.per_channel else 'per-tensor'} given"
    cfg = options.config
    if cfg.source != "default" and cfg.per_channel_set:  # the shipped default leaves it to ptq
        return f"the config sets per_channel_quantization {cfg.per_channel}"
    return None


ADAROUND_BELOW_BITS = 8


def adaround_by_default(options) -> bool:
    """AdaRound is a stage of ptq by default below 8-bit weights: at 8 bits rounding to nearest
    costs little (the sample models lose at most 0.2 points to it), and AdaRound's passes are
    the slowest stage (docs/design.md, "AdaRound")."""
    return options.param_bw < ADAROUND_BELOW_BITS


def why_no_adaround(options) -> str:
    """Why AdaRound is not a stage of this ptq (the row's and report.json's reason)."""
    if options.param_bw < ADAROUND_BELOW_BITS:
        return "--no-adaround given"
    return f"{options.param_bw}-bit weights (on by default below {ADAROUND_BELOW_BITS}; --adaround to try it)"


def why_not_equalized(options) -> str | None:
    """None when equalization is a stage of this ptq by default, else why not: with a scale per
    output channel (``options`` after the granularity choice, or the config's granularity) the
    channel imbalance that cross-layer scaling evens out costs the weights' grid nothing, and
    equalization was kept on none of the 16 corpus models where it found something to scale, and
    where it cleared the margin on a sample model, the deployed model ended within 0.4 dB and 3 of
    2,000 images of the model without it (docs/design.md, "Passes ptq no longer makes")."""
    per_channel = options.per_channel if options.per_channel is not None else options.config.per_channel
    if per_channel:
        return "per-channel weights (--equalize to try it)"
    return None


# Recalibrating the corrected model moved bias correction's held-out gain from the incumbent's grids
# by -3.1 to +2.1 dB over the 24 corpus models (docs/design.md, "Bias correction's grids").
RECALIBRATION_REACH_DB = 3.0

# The median corrected layer's bias move, in steps of the grid it reaches, from which ptq recalibrates
# the corrected model (docs/design.md, "Bias correction's grids"): over the 24 corpus models where
# both grids were built, own grids were chosen and kept on PP-OCRv5 rec (3.3 steps, +1.6 dB over the
# kept grids) and the ViTs (8.4-8.6 steps, +0.06 dB at most); below 2 steps, on PP-OCRv5 det alone
# (1.2 steps, +0.3 dB; its kept grids clear the margin in their place).
RECALIBRATION_STEPS = 2.0


def bias_moves_in_steps(before: ir.Model, after: ir.Model, layers: Iterable[str],
                        grids: Mapping[str, Encoding | None]) -> list[float]:
    """For each layer of ``layers`` (`graph.node_label`s, the same in both models) whose output, or the output of its
    only reader (a Relu, ...), has an activation grid in ``grids``: max over output channels of
    |b_after - b_before| / the grid's step (a missing bias is 0). The activations a layer's output
    reaches move by about its bias change, so recalibrating can move their grids by about that."""
    nodes_before, wanted = {node_label(n): n for n in before.graph}, set(layers)
    moves = []
    for node in after.graph:
        label = node_label(node)
        if label not in wanted:
            continue
        layer, old = as_layer(node), as_layer(nodes_before.get(label))
        if layer is None or old is None:
            continue
        grid = _first_grid(layer.output, grids)
        if grid is None:
            continue
        w_new, w_old = layer.weight_array(), old.weight_array()
        if w_new is None or w_old is None:
            continue
        delta = np.abs(bias_array(layer, w_new) - bias_array(old, w_old))
        moves.append(float(delta.max(initial=0.0) / np.max(grid.scale)))
    return moves


# Ops that move their output by at most what their input moved (slope at most 1), or not at all.
_FOLLOWED = ("Relu", "Clip", "LeakyRelu", "MaxPool", "Add", "Sub", "Max", "Min", *SAME_GRID_OPS)


def _first_grid(value: ir.Value, grids: Mapping[str, Encoding | None], hops: int = 3) -> Encoding | None:
    """The grid of ``value``, else of the output of its only reader where that reader is one of
    _FOLLOWED, and so on (``hops`` at most): a Conv's output read by a Relu alone is quantized
    after the Relu."""
    for _ in range(hops + 1):
        grid = grids.get(value.name)
        if grid is not None:
            return grid
        readers = list(value.uses())
        if len(readers) != 1 or readers[0].node.op_type not in _FOLLOWED or len(readers[0].node.outputs) != 1:
            return None
        value = readers[0].node.outputs[0]
    return None


def median_move(moves: list[float]) -> float | None:
    """The median of :func:`bias_moves_in_steps`' moves (None with none): the number the
    recalibration rule reads, and ptq's row shows."""
    return float(np.median(moves)) if moves else None


def why_not_recalibrated(moves: list[float]) -> str | None:
    """None when the bias-corrected model's own activation grids are worth a calibration run, else
    why not: its corrected layers' biases moved a median under RECALIBRATION_STEPS steps of
    their output grids. With no layer to measure (no output with a grid) it is recalibrated."""
    median = median_move(moves)
    if median is None or median >= RECALIBRATION_STEPS:
        return None
    return (f"the median corrected bias moved {median:.2f} steps of its output's grid, under the "
            f"{RECALIBRATION_STEPS:g} from which recalibrating has paid")
