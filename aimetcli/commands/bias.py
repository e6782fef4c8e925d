"""bias-correct: empirical, analytical and hybrid bias correction."""

from __future__ import annotations

import click
from rich.table import Table

from aimetcli.commands._options import (
    DataArgs, Output, QuantArgs, all_rows_option, common_options, data_options, external_data_option, input_argument,
    model_output, quant_options,
)
from aimetcli.commands._shared import load_input, open_dataset, preflight, progress_bar, save_output, shown_rows
from aimetcli.errors import AimetCliError, ErrorKind

# aimetcli.kernels.bias.METHODS, spelled here so that --help imports no numpy
# (tests/test_cli_startup.py checks that the two agree).
METHODS = ("empirical", "analytical", "hybrid")
METHOD_HELP = ("empirical: run FP32 and quantized model on --data and correct each layer's mean output shift; "
               "analytical: from the BN statistics fold-bn/equalize carried (no data); hybrid: analytical where "
               "those statistics exist, empirical elsewhere.")
TABLE_ROWS = 25


@click.command("bias-correct")
@input_argument
@model_output
@click.option("--data", "data", default=None, help="Data: .npy, .npz, image folder or random:N (empirical/hybrid).")
@click.option("--method", type=click.Choice(METHODS), default="hybrid", show_default=True, help=METHOD_HELP)
@data_options
@quant_options
@external_data_option
@all_rows_option("Every corrected layer in the table (default: the first 25).")
@common_options
def bias_correct(out: Output, model_in: str, output: str, data: str | None, method: str,
                 external_data: bool, show_all: bool, quant: QuantArgs, sampling: DataArgs) -> None:
    """Correct the biases for the shift that weight quantization causes.

    Corrects for the quantization quantsim applies with the same options; the
    output is an FP32 model with corrected biases, which records those options.

    \b
    Examples:
      aimetcli bias-correct eq.onnx -o bc.onnx --data calib.npz
      aimetcli bias-correct eq.onnx -o bc.onnx --method analytical --param-bw 6
    """
    if data is None and method != "analytical":
        raise AimetCliError(f"--method {method} needs --data (or use --method analytical)", ErrorKind.USAGE)
    preflight(out, model_in, output=output, config=quant.config_path, data=[("--data", data)])
    from aimetcli import api
    from aimetcli.bias_correction import progress_steps

    options = quant.options()
    model = load_input(out, model_in, float32=True, rewrites=True)
    dataset = open_dataset(model, data, sampling, out=out) if data else None
    batches = progress_steps(model, dataset, sampling.batch_size, options)
    with progress_bar(out, batches, "Correcting biases") as bar:
        summary = api.bias_correct(model, dataset, options, sampling.run(bar, log=out.info), method=method)
    save_output(out, model, output, external_data=external_data)
    table = Table(title=f"Bias correction ({method}, W{options.param_bw}A{options.act_bw})", title_justify="left")
    for col in ("layer", "method", "channels", "mean |shift| uncorrected", "after"):
        table.add_column(col, justify="left" if col in ("layer", "method") else "right", overflow="fold")
    for c in shown_rows(out, summary.corrected, TABLE_ROWS, show_all, "layer"):
        table.add_row(c.layer, c.method, str(c.channels),
                      "-" if c.shift_before != c.shift_before else f"{c.shift_before:.3g}",
                      "-" if c.shift_after is None else f"{c.shift_after:.3g}")
    if summary.corrected:
        out.info(table)
    shifts = summary.mean_shift_before
    out.info(f"Corrected {len(summary.corrected)} layers in {summary.seconds:.2f} s"
             + (f"; mean |shift| {shifts:.3g} -> {summary.mean_shift_after:.3g}." if shifts == shifts else "."))
    for layer, reason in summary.skipped:
        out.detail(f"not corrected: {layer}: {reason}")
    if not summary.corrected and summary.skipped:
        out.warn(f"no layer corrected: {len(summary.skipped)} skipped ({summary.skipped[0][1]}"
                 + (", ..." if len(summary.skipped) > 1 else "") + "); -v lists them")
    out.emit_json({"command": "bias-correct", "input": model_in, "output": output, **summary.to_json()})


COMMANDS = [bias_correct]
