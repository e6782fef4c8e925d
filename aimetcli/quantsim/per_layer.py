"""Per-layer control: ``--exclude`` (layers and tensors kept float) and ``--bits`` (layers and
tensors at other bitwidths than the command's ``--param-bw`` / ``--act-bw``).

A pattern names nodes (by node name, a shell-style glob such as ``head/*``, or an op type such as
``Softmax``) or tensors (by name or glob). An excluded node keeps its weights and its outputs
float: no param quantizer on its weights, no activation quantizer on its outputs, as AIMET's
per-layer "disable quantizers" does; its inputs stay on the grids their producers give them. An
excluded tensor gets no quantizer. A pattern that matches nothing is a usage error (a typo would
otherwise quantize everything and report success).

``--bits PATTERN=SPEC`` (SPEC ``w8``, ``a16`` or ``w4a8``) gives the weights (``w``) and outputs
(``a``) of the layers a pattern names, or the tensors it names, that bitwidth; later rules win.
AIMET's quantsim config has no per-layer bitwidth key (its mixed precision is set through its
Python API), so the rule is an option of its own. 16-bit activations are uint16/int16 QDQ
(opset 21), which onnxruntime runs and QNN's HTP takes as A16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

import onnx_ir as ir

from aimetcli import graph as g
from aimetcli.errors import AimetCliError, ErrorKind


def _node_matches(node: ir.Node, pattern: str) -> bool:
    return node.op_type == pattern or (node.name is not None and fnmatchcase(node.name, pattern))


def matched_tensors(model: ir.Model, pattern: str, option: str = "--exclude") -> dict[str, str]:
    """Tensor name -> "weight" or "activation", for what ``pattern`` names: the outputs and constant
    inputs (weights) of matching nodes, and matching tensors themselves. A usage error names a
    pattern that matches no node, op type or tensor of the main graph."""
    out: dict[str, str] = {}
    for node in model.graph:
        values = [v for v in node.outputs if v is not None and v.name]
        if _node_matches(node, pattern):
            for v in values:
                out.setdefault(v.name, "activation")
            for v in node.inputs:
                if v is not None and v.name and g.constant(v) is not None:
                    out.setdefault(v.name, "weight")
            continue
        for v in values:
            if fnmatchcase(v.name, pattern):
                out.setdefault(v.name, "weight" if g.constant(v) is not None else "activation")
    for v in model.graph.inputs:
        if v.name and fnmatchcase(v.name, pattern):
            out.setdefault(v.name, "activation")
    for name in model.graph.initializers:
        if fnmatchcase(name, pattern):
            out.setdefault(name, "weight")
    if not out:
        raise AimetCliError(f"{option} {pattern!r} matches no node, op type or tensor of the model; "
                            "give a node or tensor name (globs like 'head/*' work) or an op type", ErrorKind.USAGE)
    return out


def excluded_tensors(model: ir.Model, patterns: tuple[str, ...]) -> dict[str, str]:
    """Tensor name -> the reason it stays float, for every tensor the patterns exclude
    (:func:`matched_tensors` of each)."""
    out: dict[str, str] = {}
    for pattern in patterns:
        for name in matched_tensors(model, pattern):
            out.setdefault(name, f"excluded by --exclude {pattern}")
    return out


def check_patterns(model: ir.Model, options) -> None:
    """The usage error of the first ``--exclude`` or ``--bits`` pattern of ``options`` that names
    nothing in ``model`` (placement checks them too; a caller that runs the model first asks here)."""
    for pattern in options.exclude:
        matched_tensors(model, pattern)
    for rule in options.bits:
        matched_tensors(model, rule.pattern, "--bits")


@dataclass(frozen=True)
class BitsRule:
    """``--bits PATTERN=SPEC``: the weights (``param_bw``) and outputs (``act_bw``) of what
    ``pattern`` names get these bitwidths (None: the command's own)."""

    pattern: str
    param_bw: int | None = None
    act_bw: int | None = None

    @classmethod
    def parse(cls, text: str) -> BitsRule:
        """``PATTERN=w4``, ``PATTERN=a16``, ``PATTERN=w8a16`` (bitwidths 2..16)."""
        pattern, sep, spec = text.rpartition("=")
        m = _SPEC.fullmatch(spec.strip().lower())
        if not sep or not pattern or m is None or not (m.group(1) or m.group(2)):
            raise AimetCliError(f"--bits {text!r}: give PATTERN=SPEC with SPEC like w4, a16 or w8a16",
                                ErrorKind.USAGE)
        bws = [int(b) if b else None for b in (m.group(1), m.group(2))]
        if any(b is not None and not 2 <= b <= 16 for b in bws):
            raise AimetCliError(f"--bits {text!r}: bitwidths are 2 to 16", ErrorKind.USAGE)
        return cls(pattern, bws[0], bws[1])

    def spec(self) -> str:
        return (f"w{self.param_bw}" if self.param_bw else "") + (f"a{self.act_bw}" if self.act_bw else "")


_SPEC = re.compile(r"(?:w(\d+))?(?:a(\d+))?")


def apply_bits(model: ir.Model, placement, rules: tuple[BitsRule, ...]) -> None:
    """Give the quantizers the rules name their bitwidths (in order: later rules win)."""
    for rule in rules:
        named = matched_tensors(model, rule.pattern, "--bits")
        if rule.act_bw is not None:
            for a in placement.activations:
                if named.get(a.tensor) == "activation":
                    a.bitwidth = rule.act_bw
        if rule.param_bw is not None:
            for p in placement.params:
                if p.kind == "weight" and named.get(p.tensor) == "weight":
                    p.bitwidth = rule.param_bw


def apply_exclusions(model: ir.Model, placement, patterns: tuple[str, ...]) -> None:
    """Drop the quantizers of what ``patterns`` exclude from ``placement`` (each recorded in
    ``placement.skipped`` with its pattern)."""
    if not patterns:
        return
    excluded = excluded_tensors(model, patterns)
    for quantizers in (placement.activations, placement.params):
        placement.skipped.extend((q.tensor, excluded[q.tensor]) for q in quantizers if q.tensor in excluded)
        quantizers[:] = [q for q in quantizers if q.tensor not in excluded]
