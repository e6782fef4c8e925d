"""Lift Constant nodes to initializers, so every pass sees weights the same way.

PaddlePaddle and some other exporters store weights (and Clip bounds) as
``Constant`` nodes; onnxruntime's quantizer then mistakes them for activations.
Every constant tensor becomes an initializer of the same name; nothing else changes.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass


class LiftConstantsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inner = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)
        return ir.passes.PassResult(model, inner(model).modified)
