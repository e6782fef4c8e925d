"""Which tensor ptq's judge scores for a graph output, and how a Softmax's scores are read.

A Softmax's probabilities are scored on their logits, and a Concat of parts whose ranges are too
far apart for one grid (a detector's boxes beside its scores) part by part (:func:`scored_parts`);
the argmax a user reads from logits (:func:`softmax_argmax`) is compared class-balanced
(:func:`balanced_agreement`). ptq_judge.Judge uses them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

from aimetcli import graph as g

# between a Softmax and the graph output: a sim's output quantizer (quantsim/insert.py) and ops
# that move values without changing them (the version converter wraps an old Softmax in Reshapes)
PASS_THROUGH = frozenset({"QuantizeLinear", "DequantizeLinear", "Identity", "Reshape", "Flatten", "Squeeze",
                           "Unsqueeze"})


def scored_node(model: ir.Model, output: str) -> ir.Node | None:
    """The Softmax or multi-input Concat that computes graph output ``output`` (through a sim's
    output quantizer and the value-preserving ops of PASS_THROUGH), or None."""
    from aimetcli.quantsim.insert import is_grid_node

    value = next((o for o in model.graph.outputs if o.name == output), None)
    node = value.producer() if value is not None else None
    while node is not None and (node.op_type in PASS_THROUGH or (node.op_type == "Clip" and is_grid_node(node))):
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    if node is None or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    if node.op_type == "Softmax" and node.inputs[0] is not None:
        return node
    if node.op_type == "Concat" and len(node.inputs) > 1 and all(
            v is not None and v.const_value is None and v.producer() is not None for v in node.inputs):
        return node
    return None


def scored_parts(model: ir.Model, output: str) -> list[str] | None:
    """What ptq scores instead of graph output ``output`` (through a sim's output quantizer),
    or None for the output itself:

    - the input of the Softmax that computes it: a saturated softmax squashes the error of
      every confident sample to nothing, so the SQNR of the probabilities is decided by the few
      samples near the decision boundary (a 2-class text-direction classifier: 18 dB on its 32
      calibration lines, 31 dB on 64 others, for the same sim), while the logits carry the
      network's error on every sample;
    - the inputs of the Concat that computes it, each a part scored on its own
      (ptq_judge.Judge._energies), when :func:`far_apart` finds their ranges too far apart for
      one grid: a YOLO head concatenates boxes in pixels with sigmoid scores in [0, 1], and the
      SQNR of the whole output is that of the boxes alone (a trained YOLOv8n: 29 dB on the
      output while its scores were at 5 dB)."""
    node = scored_node(model, output)
    return None if node is None else [v.name for v in node.inputs]


def softmax_argmax(model: ir.Model, output: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """For an output computed by a Softmax: the function that maps the Softmax's input (its
    logits, a row per sample) to the argmax along the Softmax's axis, per sample and position
    (shape [samples, positions]); None for any other output. Softmax before opset 13 takes the
    argmax over the axis and every axis after it (the input is coerced to 2-D there)."""
    node = scored_node(model, output)
    if node is None or node.op_type != "Softmax":
        return None
    opset = g.opset_version(model)
    attr = node.attributes.get("axis")
    axis = attr.as_int() if attr is not None else (-1 if opset >= 13 else 1)

    def argmax(x: np.ndarray) -> np.ndarray:
        ax = axis + x.ndim if axis < 0 else axis
        if opset < 13:
            x = x.reshape(*x.shape[:ax], -1)
            ax = x.ndim - 1
        return np.argmax(x, axis=ax).reshape(x.shape[0], -1)

    return argmax


def far_apart(refs: list[np.ndarray], samples: int) -> bool:
    """Whether FP32's Concat inputs ``refs`` each have a row per sample and the narrowest
    range (including 0, as a grid's) would keep fewer than MIN_CONCAT_LEVELS of an 8-bit grid
    over the widest: the rule by which quantsim gives such a Concat's inputs grids of their own
    (quantsim/placement.py, revise_after_calibration)."""
    from aimetcli.quantsim.placement import MIN_CONCAT_LEVELS

    if any(r.ndim == 0 or r.shape[0] != samples or r.size == 0 or r.dtype.kind != "f" for r in refs):
        return False
    spans = [max(float(np.max(r)), 0.0) - min(float(np.min(r)), 0.0) for r in refs]
    widest = max(spans)
    return widest > 0 and min(spans) / widest * 255 < MIN_CONCAT_LEVELS


def balanced_agreement(reference: np.ndarray, argmax: np.ndarray) -> float:
    """Class-balanced agreement of ``argmax`` with ``reference`` (integer classes, same shape):
    the mean over the classes that occur in ``reference`` of the fraction of their positions
    where ``argmax`` agrees. A recognizer's CTC output is blank at most steps (PP-OCRv5: 66% of
    them), so plain agreement rates a model that reads blank everywhere above one that reads
    the characters; here blank is one class among the others."""
    ref = reference.ravel()
    counts = np.bincount(ref)
    hits = np.bincount(ref, weights=(argmax.ravel() == ref))
    present = counts > 0
    return float(np.mean(hits[present] / counts[present])) if present.any() else 1.0
