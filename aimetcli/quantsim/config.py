"""AIMET's quantsim configuration file, read into typed settings.

The file (AIMET's quantsim_config JSON) has six sections, from general to specific:

    defaults      ops: is_output_quantized, is_input_quantized, is_symmetric
                  params: is_quantized, is_symmetric
                  strict_symmetric, unsigned_symmetric, per_channel_quantization,
                  hw_version, supported_kernels (accepted, not used)
    params        per parameter kind ("weight", "bias"): is_quantized, is_symmetric
    op_type       per ONNX op type: is_input_quantized, is_output_quantized, is_symmetric,
                  per_channel_quantization, params {kind: {...}}, encoding_constraints,
                  supported_kernels
    supergroups   [{"op_list": [op, op, ...]}]: no quantizer between fused ops
    supergroup_pass_list  [pattern name, ...] (AIMET 2.x: "LayerNormalization", "RMSNormalization",
                  "MatmulAdd"): accepted and recorded; aimetcli always treats a decomposed
                  LayerNorm or GELU and a MatMul/Conv whose bias is a separate Add as one unit,
                  float inside and quantized at its output (quantsim/units.py)
    model_input   is_input_quantized
    model_output  is_output_quantized

Booleans are the strings "True"/"False" (real JSON booleans are accepted too).
Unknown keys are errors that name the key, so a typo never silently does nothing.
The shipped default follows AIMET's default_config.json, with the data-movement
ops (Reshape, Flatten, Transpose, ...) unquantized on their outputs, and with a
BatchNormalization after a Conv or ConvTranspose (then Relu or Clip) as a supergroup: every
runtime folds it into the conv, so a grid between them simulates a tensor no runtime has
(rapidocr's text-direction classifier, 35 BN left, quantsim without fold-bn: 16.4 -> 32.6 dB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from aimetcli.errors import AimetCliError, ErrorKind

_DEFAULT_KEYS = {"ops", "params", "strict_symmetric", "unsigned_symmetric", "per_channel_quantization",
                 "hw_version", "supported_kernels"}
_OPS_KEYS = {"is_output_quantized", "is_input_quantized", "is_symmetric"}
_PARAM_KEYS = {"is_quantized", "is_symmetric"}
_OP_TYPE_KEYS = {"is_input_quantized", "is_output_quantized", "is_symmetric", "per_channel_quantization",
                 "params", "encoding_constraints", "supported_kernels"}
_TOP_KEYS = {"defaults", "params", "op_type", "supergroups", "supergroup_pass_list", "model_input", "model_output"}


@dataclass
class ParamRule:
    is_quantized: bool | None = None
    is_symmetric: bool | None = None


@dataclass
class OpRule:
    is_input_quantized: bool | None = None
    is_output_quantized: bool | None = None
    is_symmetric: bool | None = None
    per_channel: bool | None = None
    params: dict[str, ParamRule] = field(default_factory=dict)
    encoding_min: float | None = None
    encoding_max: float | None = None


@dataclass
class QuantsimConfig:
    output_quantized: bool = True
    input_quantized: bool = False
    act_symmetric: bool = False
    param_quantized: bool = True
    param_symmetric: bool = True
    strict_symmetric: bool = False
    unsigned_symmetric: bool = True
    per_channel: bool = False
    per_channel_set: bool = False  # the file's defaults say per_channel_quantization (ptq's choice leaves it)
    params: dict[str, ParamRule] = field(default_factory=dict)
    op_types: dict[str, OpRule] = field(default_factory=dict)
    supergroups: list[tuple[str, ...]] = field(default_factory=list)
    supergroup_passes: tuple[str, ...] = ()  # AIMET's supergroup_pass_list, as given
    model_input_quantized: bool = True
    model_output_quantized: bool = False  # True forces quantizers on graph outputs
    source: str = "default"

    # Resolution, most specific first
    def _op(self, op_type: str, attr: str, default: bool) -> bool:
        """The op type's own setting ``attr`` when its rule has one, else ``default``."""
        value = getattr(self.op_types.get(op_type), attr, None)
        return default if value is None else value

    def op_output_quantized(self, op_type: str) -> bool:
        return self._op(op_type, "is_output_quantized", self.output_quantized)

    def op_input_quantized(self, op_type: str) -> bool:
        return self._op(op_type, "is_input_quantized", self.input_quantized)

    def op_act_symmetric(self, op_type: str) -> bool:
        return self._op(op_type, "is_symmetric", self.act_symmetric)

    def param_rule(self, op_type: str, kind: str) -> ParamRule:
        """is_quantized / is_symmetric for a parameter kind ("weight", "bias") of an op."""
        out = ParamRule(self.param_quantized, self.param_symmetric)
        general = self.params.get(kind)
        specific = self.op_types.get(op_type, OpRule()).params.get(kind)
        for rule in (general, specific):
            if rule is None:
                continue
            if rule.is_quantized is not None:
                out.is_quantized = rule.is_quantized
            if rule.is_symmetric is not None:
                out.is_symmetric = rule.is_symmetric
        return out

    def op_per_channel(self, op_type: str) -> bool:
        return self._op(op_type, "per_channel", self.per_channel)


def _bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("True", "False", "true", "false"):
        return value.lower() == "true"
    raise AimetCliError(f"quantsim config: {where} must be \"True\" or \"False\", not {value!r}", ErrorKind.CONFIG)


def _dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise AimetCliError(f"quantsim config: {where} must be an object", ErrorKind.CONFIG)
    return value


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise AimetCliError(
            f"quantsim config: unknown key {unknown[0]!r} in {where} (allowed: {', '.join(sorted(allowed))})",
            ErrorKind.CONFIG,
        )


def _param_rules(d: dict, where: str) -> dict[str, ParamRule]:
    rules = {}
    for kind, body in _dict(d, where).items():
        body = _dict(body, f"{where}.{kind}")
        _check_keys(body, _PARAM_KEYS, f"{where}.{kind}")
        rules[kind] = ParamRule(
            _bool(body["is_quantized"], f"{where}.{kind}.is_quantized") if "is_quantized" in body else None,
            _bool(body["is_symmetric"], f"{where}.{kind}.is_symmetric") if "is_symmetric" in body else None,
        )
    return rules


def parse_config(doc: dict, source: str = "config") -> QuantsimConfig:
    doc = _dict(doc, "the top level")
    _check_keys(doc, _TOP_KEYS, "the top level")
    cfg = QuantsimConfig(source=source)
    defaults = _dict(doc.get("defaults", {}), "defaults")
    _check_keys(defaults, _DEFAULT_KEYS, "defaults")
    ops = _dict(defaults.get("ops", {}), "defaults.ops")
    _check_keys(ops, _OPS_KEYS, "defaults.ops")
    if "is_output_quantized" in ops:
        cfg.output_quantized = _bool(ops["is_output_quantized"], "defaults.ops.is_output_quantized")
    if "is_input_quantized" in ops:
        cfg.input_quantized = _bool(ops["is_input_quantized"], "defaults.ops.is_input_quantized")
    if "is_symmetric" in ops:
        cfg.act_symmetric = _bool(ops["is_symmetric"], "defaults.ops.is_symmetric")
    params = _dict(defaults.get("params", {}), "defaults.params")
    _check_keys(params, _PARAM_KEYS, "defaults.params")
    if "is_quantized" in params:
        cfg.param_quantized = _bool(params["is_quantized"], "defaults.params.is_quantized")
    if "is_symmetric" in params:
        cfg.param_symmetric = _bool(params["is_symmetric"], "defaults.params.is_symmetric")
    for key, attr in (("strict_symmetric", "strict_symmetric"), ("unsigned_symmetric", "unsigned_symmetric"),
                      ("per_channel_quantization", "per_channel")):
        if key in defaults:
            setattr(cfg, attr, _bool(defaults[key], f"defaults.{key}"))
    cfg.per_channel_set = "per_channel_quantization" in defaults
    cfg.params = _param_rules(doc.get("params", {}), "params")
    for op, body in _dict(doc.get("op_type", {}), "op_type").items():
        where = f"op_type.{op}"
        body = _dict(body, where)
        _check_keys(body, _OP_TYPE_KEYS, where)
        rule = OpRule()
        for key, attr in (("is_input_quantized", "is_input_quantized"), ("is_output_quantized", "is_output_quantized"),
                          ("is_symmetric", "is_symmetric"), ("per_channel_quantization", "per_channel")):
            if key in body:
                setattr(rule, attr, _bool(body[key], f"{where}.{key}"))
        if "params" in body:
            rule.params = _param_rules(body["params"], f"{where}.params")
        if "encoding_constraints" in body:
            ec = _dict(body["encoding_constraints"], f"{where}.encoding_constraints")
            _check_keys(ec, {"min", "max"}, f"{where}.encoding_constraints")
            try:
                rule.encoding_min = float(ec["min"]) if "min" in ec else None
                rule.encoding_max = float(ec["max"]) if "max" in ec else None
            except (TypeError, ValueError) as exc:
                raise AimetCliError(f"quantsim config: {where}.encoding_constraints must hold numbers",
                                    ErrorKind.CONFIG) from exc
        cfg.op_types[op] = rule
    groups = doc.get("supergroups", [])
    if not isinstance(groups, list):
        raise AimetCliError("quantsim config: supergroups must be a list", ErrorKind.CONFIG)
    for i, grp in enumerate(groups):
        grp = _dict(grp, f"supergroups[{i}]")
        _check_keys(grp, {"op_list"}, f"supergroups[{i}]")
        ops_list = grp.get("op_list")
        if not isinstance(ops_list, list) or len(ops_list) < 2 or not all(isinstance(o, str) for o in ops_list):
            raise AimetCliError(f"quantsim config: supergroups[{i}].op_list must list two or more op types",
                                ErrorKind.CONFIG)
        cfg.supergroups.append(tuple(ops_list))
    passes = doc.get("supergroup_pass_list", [])
    if not isinstance(passes, list) or not all(isinstance(p, str) for p in passes):
        raise AimetCliError("quantsim config: supergroup_pass_list must be a list of pattern names", ErrorKind.CONFIG)
    cfg.supergroup_passes = tuple(passes)
    mi = _dict(doc.get("model_input", {}), "model_input")
    _check_keys(mi, {"is_input_quantized"}, "model_input")
    if "is_input_quantized" in mi:
        cfg.model_input_quantized = _bool(mi["is_input_quantized"], "model_input.is_input_quantized")
    else:
        cfg.model_input_quantized = False
    mo = _dict(doc.get("model_output", {}), "model_output")
    _check_keys(mo, {"is_output_quantized"}, "model_output")
    if "is_output_quantized" in mo:
        cfg.model_output_quantized = _bool(mo["is_output_quantized"], "model_output.is_output_quantized")
    return cfg


def load_config(path: str | None) -> QuantsimConfig:
    """The config at ``path``, or the shipped default when None."""
    if path is None:
        text = resources.files("aimetcli.quantsim").joinpath("default_config.json").read_text()
        return parse_config(json.loads(text), "default")
    p = Path(path)
    if not p.is_file():
        raise AimetCliError(f"--config {path}: no such file", ErrorKind.CONFIG)
    try:
        doc = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise AimetCliError(f"--config {path}: not valid JSON ({exc}); fix the file", ErrorKind.CONFIG) from exc
    return parse_config(doc, path)
