"""What ptq records besides export's files: its table's rows and decisions (:class:`Stage`,
:class:`Decision`, in :class:`PtqSummary`), the options the sim actually has, and report.json's
'ptq' section (the decisions, the table's rows, the files and the deploy line)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimetcli import model_io
from aimetcli.records import finite, jsonable
from aimetcli.steps.quantsim import quantizer_args


@dataclass
class Stage:
    """One row of ptq's table.

    ``calib_sqnr_db``: SQNR of the scored output against FP32 on all the calibration samples
    (what the choices but bias correction compare; that one is judged on the held-out samples). ``sqnr_db`` and
    ``top1``: on ``data`` ('evaluation', or 'calibration' when no --eval was given). ``seconds``:
    the stage's own time (its rewrite, calibration, bias correction and scoring runs).
    ``kept``: True / False for a choice, None for a row that is no choice."""

    name: str
    top1: float | None
    sqnr_db: float | None
    seconds: float
    note: str = ""
    kept: bool | None = None
    calib_sqnr_db: float | None = None
    data: str = "evaluation"
    gain_db: float | None = None  # a choice's SQNR gain over the incumbent, on the samples that judge it
    margin_db: float | None = None  # and the gain it had to exceed
    veto: str = ""  # why a gain over the margin was not kept (Judge.veto)


@dataclass
class Decision:
    """A choice ptq made, for report.json: what was tried, kept or not, and the scores that decided."""

    choice: str
    kept: bool | None
    reason: str
    sqnr_before_db: float | None = None
    sqnr_after_db: float | None = None
    margin_db: float | None = None


@dataclass
class PtqSummary:
    stages: list[Stage]
    options: dict
    export: Any = None
    warnings: list[str] = field(default_factory=list)
    # with several schemes tried: each one's output SQNR against FP32 on the calibration samples
    schemes_tried: list[dict] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # samples fitted on and held out
    files: list[str] = field(default_factory=list)
    deploy: str = ""
    # with layer_errors: per layer output, the final sim's SQNR against the FP32 model it quantizes
    layer_errors: list[dict] = field(default_factory=list)
    model: Any = None  # the final FP32 model (folded, equalized, corrected as kept); not in the JSON
    # seconds spent scoring sims on the evaluation data (--eval), which decide nothing: ptq's
    # own cost is its time less this (quantsim has no evaluation to compare with)
    evaluation_seconds: float = 0.0
    mixed_precision: Any = None  # with a budget: steps.amp.AmpResult (the Pareto curve, the choice)

    def to_json(self) -> dict:
        return jsonable(self)


def used_options(opts, encodings) -> dict:
    """``opts.as_record`` with per_channel and the symmetries the sim actually has (the config
    decides them where the options say None)."""
    record = opts.as_record()
    args = quantizer_args(opts, encodings)
    record.update(per_channel=args.per_channel, param_symmetric=args.param_symmetric,
                  act_symmetric=args.activation_symmetric, target=opts.target)
    return record


def add_to_report(outdir: str, summary) -> None:
    """report.json gets a 'ptq' section: the decisions, the table's rows, the files and the deploy line."""
    path = Path(outdir) / "report.json"
    doc = json.loads(path.read_text())
    doc["options"] = summary.options
    doc["ptq"] = finite({k: v for k, v in summary.to_json().items() if k not in ("export", "options")})
    model_io.write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
