"""``--exclude``: layers and tensors a user keeps float.

A pattern names nodes (by node name, a shell-style glob such as ``head/*``, or an op type such as
``Softmax``) or tensors (by name or glob). An excluded node keeps its weights and its outputs
float: no param quantizer on its weights, no activation quantizer on its outputs, as AIMET's
per-layer "disable quantizers" does; its inputs stay on the grids their producers give them. An
excluded tensor gets no quantizer. A pattern that matches nothing is a usage error (a typo would
otherwise quantize everything and report success).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.errors import AimetCliError, ErrorKind


def _node_matches(node: ir.Node, pattern: str) -> bool:
    return node.op_type == pattern or (node.name is not None and fnmatchcase(node.name, pattern))


def excluded_tensors(model: ir.Model, patterns: tuple[str, ...]) -> dict[str, str]:
    """Tensor name -> the reason it stays float, for every tensor the patterns exclude: the
    outputs and weights of matching nodes, and matching tensors themselves. Raises a usage error
    naming a pattern that matches no node, op type or tensor of the main graph."""
    out: dict[str, str] = {}
    for pattern in patterns:
        hit = False
        for node in model.graph:
            values = [v for v in node.outputs if v is not None]
            if _node_matches(node, pattern):
                hit = True
                why = f"excluded by --exclude {pattern} (node {g.node_label(node)})"
                for v in [*values, *(v for v in node.inputs if v is not None and g.constant(v) is not None)]:
                    out.setdefault(v.name, why)
                continue
            for v in values:
                if fnmatchcase(v.name, pattern):
                    hit = True
                    out.setdefault(v.name, f"excluded by --exclude {pattern}")
        for v in model.graph.inputs:
            if fnmatchcase(v.name, pattern):
                hit = True
                out.setdefault(v.name, f"excluded by --exclude {pattern}")
        if not hit:
            raise AimetCliError(f"--exclude {pattern!r} matches no node, op type or tensor of the model; "
                                "give a node or tensor name (globs like 'head/*' work) or an op type", ErrorKind.USAGE)
    return out


def apply_exclusions(model: ir.Model, placement, patterns: tuple[str, ...]) -> None:
    """Drop the quantizers of what ``patterns`` exclude from ``placement`` (each recorded in
    ``placement.skipped`` with its pattern)."""
    if not patterns:
        return
    excluded = excluded_tensors(model, patterns)
    kept_acts = []
    for a in placement.activations:
        if a.tensor in excluded:
            placement.skipped.append((a.tensor, excluded[a.tensor]))
        else:
            kept_acts.append(a)
    kept_params = []
    for p in placement.params:
        if p.tensor in excluded:
            placement.skipped.append((p.tensor, excluded[p.tensor]))
        else:
            kept_params.append(p)
    placement.activations[:] = kept_acts
    placement.params[:] = kept_params
