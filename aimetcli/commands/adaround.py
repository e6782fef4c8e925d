"""adaround: learn each weight's rounding (AdaRound) for the quantization quantsim applies."""

from __future__ import annotations

import click
from rich.table import Table

from aimetcli.commands._options import (
    DataArgs, Output, QuantArgs, all_rows_option, common_options, data_options, external_data_option, input_argument,
    model_output, quant_options,
)
from aimetcli.commands._shared import load_input, open_dataset, preflight, save_output, shown_rows

TABLE_ROWS = 25


@click.command("adaround")
@input_argument
@model_output
@click.option("--data", "data", required=True, help="Calibration data: .npy, .npz, image folder or random:N.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Iterations per layer (default: AIMET's, 15,000 below 8-bit weights, 10,000 otherwise).")
@click.option("--passes", type=click.IntRange(min=1), default=None,
              help="Chunks of layers measured in turn, each with the earlier ones AdaRounded (default: AIMET's "
                   "order, one layer after another, layers that do not read each other's outputs together; "
                   "fewer is faster and, measured, much less accurate).")
@data_options
@quant_options
@external_data_option
@all_rows_option("Every layer in the table (default: the first 25).")
@common_options
def adaround(out: Output, model_in: str, output: str, data: str, iterations: int | None, passes: int | None,
             external_data: bool, show_all: bool, quant: QuantArgs, sampling: DataArgs) -> None:
    """Learn whether each weight rounds up or down (AdaRound), without torch.

    The output is an FP32 model whose weights lie on their quantization grid, with
    the grids recorded in it: quantsim keeps them (same weight options), and export
    writes the same integers.

    \b
    Examples:
      aimetcli adaround eq.onnx -o ar.onnx --data calib.npz --param-bw 4
      aimetcli adaround eq.onnx -o ar.onnx --data calib.npz --param-bw 4 --per-channel
    """
    preflight(out, model_in, output=output, config=quant.config_path, data=[("--data", data)])
    from aimetcli import api
    from aimetcli.kernels.adaround import AdaroundParams

    options = quant.options()
    model = load_input(out, model_in, float32=True, rewrites=True)
    dataset = open_dataset(model, data, sampling, out=out)

    def on_layer(row) -> None:
        if not out.quiet:
            out.console.print(f"AdaRound {row.layer}: loss {row.loss_nearest:.4g} -> {row.loss_adaround:.4g} "
                          f"({row.changed:.1%} rounded the other way, {row.seconds:.2f} s)", markup=False)

    summary = api.adaround(model, dataset, options, sampling.run(log=out.info), params=AdaroundParams(iterations=iterations),
                           passes=passes, on_layer=on_layer)
    save_output(out, model, output, external_data=external_data)
    table = Table(title=f"AdaRound (W{options.param_bw}, {summary.iterations} iterations a layer)",
                  title_justify="left")
    for col in ("layer", "weights", "loss nearest", "loss AdaRound", "flipped", "s"):
        table.add_column(col, justify="left" if col == "layer" else "right", overflow="fold")
    for r in shown_rows(out, summary.layers, TABLE_ROWS, show_all, "layer"):
        table.add_row(r.layer, "x".join(map(str, r.shape)), f"{r.loss_nearest:.4g}", f"{r.loss_adaround:.4g}",
                      f"{r.changed:.1%}", f"{r.seconds:.2f}")
    if summary.layers:
        out.info(table)
    out.info(f"AdaRounded {len(summary.layers)} layers in {summary.seconds:.2f} s "
             f"(moments {summary.moments_seconds:.2f} s, rounding {summary.optimize_seconds:.2f} s).")
    if summary.oversized:
        out.warn(f"not AdaRounded, their second moments too big: {', '.join(summary.oversized)} (-v: sizes)")
    for layer, reason in summary.skipped:
        out.detail(f"not AdaRounded: {layer}: {reason}")
    if summary.shared and summary.layers:
        out.warn(f"{len(summary.shared)} layers not AdaRounded: their weights are shared with other layers (a Siamese "
                 "network's branches, an unrolled LSTM's Gemms), which would need one rounding for all of them; -v lists them")
    if not summary.layers:
        out.warn(f"no layer AdaRounded ({len(summary.skipped)} skipped); -v lists them")
    out.emit_json({"command": "adaround", "input": model_in, "output": output, **summary.to_json()})


COMMANDS = [adaround]
