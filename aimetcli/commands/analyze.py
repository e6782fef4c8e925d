"""analyze: which quantizers cost the most, measured one by one on a switchable sim."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click
from rich.table import Table

from aimetcli.commands._options import (
    DataArgs, Output, QuantArgs, common_options, data_options, input_argument, quant_options,
)
from aimetcli.commands._shared import load_input, open_dataset, preflight, progress_bar

DEFAULT_SAMPLES = 64


@click.command("analyze")
@input_argument
@click.option("-o", "--output", "output", required=True, help="Output directory (created if missing).")
@click.option("--data", "data", required=True, help="Calibration data: .npy, .npz, image folder or random:N.")
@click.option("--eval", "eval_data", default=None, help="Data the sensitivities are measured on (default: --data).")
@click.option("--samples", type=click.IntRange(1), default=DEFAULT_SAMPLES, show_default=True,
              help="Samples of the analysis data each configuration runs on.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="Rows of the table.")
@data_options
@quant_options
@common_options
def analyze(out: Output, model_in: str, output: str, data: str, eval_data: str | None, samples: int, top: int,
            quant: QuantArgs, sampling: DataArgs) -> None:
    """Per quantizer: the output's SQNR with only it on, and with all but it on.

    Builds quantsim's sim with these options (calibrated on --data), makes every
    quantizer switchable, and runs each configuration on the first --samples of
    --eval (or --data) against FP32. The table lists the quantizers whose tensor
    kept float would recover the most; report.json in the output directory holds
    every quantizer, the check of the ranking (the worst three alone, and all
    the others), each layer's error in the full sim, and each quantized tensor's
    grid range, data range and clipped share on --data; index.html shows them,
    with histograms of the worst eight tensors. Use --exclude on quantsim,
    bias-correct, adaround or ptq to keep the worst float.

    \b
    Examples:
      aimetcli analyze model.onnx -o analysis/ --data calib.npz --param-bw 4
    """
    preflight(out, model_in, output=output, output_is_dir=True, bitwidths=quant.bitwidths(),
              config=quant.config_path, data=[("--data", data), ("--eval", eval_data)])
    from aimetcli import api
    from aimetcli.model_io import write_text_atomic
    from aimetcli.steps.analyze import planned_runs

    options = quant.options()
    model = load_input(out, model_in, float32=True)
    calib = open_dataset(model, data, sampling, out=out)
    scored = open_dataset(model, eval_data, dataclasses.replace(sampling, num_samples=None), out=out,
                          scored=True) if eval_data else None
    total = 2 * calib.num_batches(sampling.batch_size) + planned_runs(model, options)  # calibration, ranges
    with progress_bar(out, total, "Calibrating and measuring") as bar:
        result = api.analyze(model, calib, options, sampling.run(bar), evaluation=scored, samples=samples)
    for w in result.warnings:
        out.warn(w)
    os.makedirs(output, exist_ok=True)
    doc = {"command": "analyze", "input": model_in, "options": options.as_record(), **result.to_json()}
    write_text_atomic(Path(output) / "report.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    from aimetcli.report_analysis import write_report

    write_report(Path(output) / "index.html", result, Path(model_in).name, options.as_record())

    table = Table(title=f"Quantizers whose float tensor recovers the most (sim {result.full_sqnr_db:.1f} dB "
                        f"against FP32 on {result.samples} samples)")
    for col in ("quantizer", "kind", "op", "only on dB", "all but dB", "recovers dB"):
        table.add_column(col, justify="left" if col in ("quantizer", "kind", "op") else "right")
    for q in result.worst(top):
        table.add_row(q.tensor, q.kind, q.op, f"{q.only_sqnr_db:.1f}", f"{q.all_but_sqnr_db:.1f}",
                      f"{q.recovered_db(result.full_sqnr_db):+.1f}")
    out.info(table)
    if result.top_float_sqnr_db is not None:
        out.info(f"Check: the worst {len(result.top)} float: {result.top_float_sqnr_db:.1f} dB; "
                 f"only they quantized: {result.top_only_sqnr_db:.1f} dB (all: {result.full_sqnr_db:.1f} dB).")
    clipping = max(result.ranges, key=lambda r: r.clipped_fraction, default=None)
    if clipping is not None and clipping.clipped:
        out.info(f"Most clipped: {clipping.tensor}, {100 * clipping.clipped_fraction:.3g}% of its calibration values "
                 f"beyond its {clipping.bitwidth}-bit grid [{clipping.grid_min:.4g}, {clipping.grid_max:.4g}].")
    out.info(f"Wrote {os.path.join(output, 'report.json')} and index.html ({len(result.quantizers)} quantizers, "
             f"{result.seconds:.1f} s)")
    out.emit_json(doc)
