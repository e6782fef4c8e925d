"""What ptq records besides export's files: the options the sim actually has, and report.json's
'ptq' section (the decisions, the table's rows, the files and the deploy line)."""

from __future__ import annotations

import json
from pathlib import Path

from aimetcli import model_io
from aimetcli.records import finite
from aimetcli.steps.quantsim import quantizer_args


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
