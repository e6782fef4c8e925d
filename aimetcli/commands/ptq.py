"""ptq: AIMET's recommended post-training flow in one command."""

from __future__ import annotations

import click
from rich.table import Table

from typing import TYPE_CHECKING

from aimetcli.cli import Output, common_options
from aimetcli.commands._shared import (
    data_options, encoding_version_option, input_argument, load_input, open_dataset, preflight, simplify_option,
)
from aimetcli.commands.bias import METHOD_HELP, METHODS
from aimetcli.commands.export import render_export
from aimetcli.commands.quantsim import AUTO_SCHEME, make_options, quant_options
from aimetcli.errors import AimetCliError, ErrorKind

if TYPE_CHECKING:
    from aimetcli import api


@click.command("ptq")
@input_argument
@click.option("-o", "--output", "output", required=True, help="Output directory (created if missing).")
@click.option("--data", "data", required=True, help="Calibration data: .npy, .npz, image folder or random:N.")
@click.option("--eval", "eval_data", default=None, help="Evaluation data (default: the calibration data).")
@click.option("--labels", "labels_key", default=None, help="Labels key in the evaluation .npz (top-1 per stage).")
@click.option("--no-equalize", is_flag=True, help="Skip cross-layer equalization.")
@click.option("--no-bias-correct", is_flag=True, help="Skip bias correction.")
@click.option("--bias-correct-method", type=click.Choice(METHODS), default="hybrid", show_default=True,
              help=METHOD_HELP)
@encoding_version_option
@simplify_option
@data_options
@quant_options(auto_scheme=True)
@common_options
def ptq(out: Output, model_in: str, output: str, data: str, eval_data: str | None, labels_key: str | None,
        no_equalize: bool, no_bias_correct: bool, bias_correct_method: str, encoding_version: str, simplify: bool,
        config_path: str | None, **kw) -> None:
    """Fold BN, equalize, calibrate, bias-correct, calibrate again and export.

    Prints one table: per stage, top-1 of the quantized model (with --labels) or
    the SQNR of its output against FP32, and the time taken. Equalization and bias
    correction are each kept only where they raise that SQNR on the calibration
    data (the table says when one is not). With --quant-scheme auto (the default)
    the flow runs with min-max and with tf-enhanced ranges and the one closer to
    FP32 on the calibration data is exported, as AIMET's AutoQuant chooses its
    scheme. The output directory gets sim.onnx and what export writes.

    \b
    Examples:
      aimetcli ptq model.onnx -o out/ --data calib.npz --eval eval.npz --labels label
      aimetcli ptq model.onnx -o out/ --data calib.npz --per-channel --no-bias-correct
    """
    from aimetcli import api

    if labels_key and not eval_data and not data.endswith(".npz"):
        raise AimetCliError("--labels needs an .npz with labels (give --eval)", ErrorKind.USAGE)
    preflight(out, model_in, output=output, output_is_dir=True, encoding_version=encoding_version,
              bitwidths=(kw["param_bw"], kw["act_bw"]), config=config_path)
    options = make_options(**kw)
    schemes = api.scheme_candidates(options) if kw["quant_scheme"] == AUTO_SCHEME else (options.scheme,)
    model = load_input(out, model_in, None, simplify=simplify, float32=True)
    calib = open_dataset(model, data, out=out, **kw)
    evaluation = open_dataset(model, eval_data, labels_key=labels_key, out=out, scored=True,
                              **{**kw, "num_samples": None}) if eval_data else None
    if evaluation is None and labels_key:
        evaluation = open_dataset(model, data, labels_key=labels_key, out=out, scored=True, **kw)

    def on_stage(stage: api.Stage) -> None:
        value = (f"top-1 {stage.top1:.2f}%" if stage.top1 is not None else
                 f"SQNR {stage.sqnr_db:.1f} dB" if stage.sqnr_db is not None else stage.note)
        out.info(f"[{stage.seconds:6.2f} s] {stage.name}: {value}")

    summary = api.ptq(model, calib, evaluation, options, outdir=output, equalize_model=not no_equalize,
                      correct_bias=not no_bias_correct, method=bias_correct_method, config_path=config_path,
                      batch_size=kw["batch_size"], encoding_version=encoding_version, schemes=schemes,
                      on_stage=on_stage)
    for w in summary.warnings:
        out.warn(w)
    table = Table(title=f"PTQ W{options.param_bw}A{options.act_bw} "
                        f"{'per-channel' if options.per_channel else 'per-tensor'} ({summary.options['scheme']})",
                  title_justify="left")
    for col in ("stage (quantized)", "top-1 %", "SQNR dB", "time s", "note"):
        table.add_column(col, justify="right" if col in ("top-1 %", "SQNR dB", "time s") else "left")
    for s in summary.stages:
        table.add_row(s.name, "-" if s.top1 is None else f"{s.top1:.2f}",
                      "-" if s.sqnr_db is None else f"{s.sqnr_db:.1f}", f"{s.seconds:.2f}", s.note)
    out.info(table)
    for tried in summary.schemes_tried:
        out.detail(f"scheme {tried['scheme']}: output SQNR {tried['calib_sqnr_db']:.1f} dB against FP32 on the "
                   "calibration data")
    render_export(out, summary.export)
    out.emit_json({"command": "ptq", "input": model_in, "output": output, **summary.to_json()})


COMMANDS = [ptq]
