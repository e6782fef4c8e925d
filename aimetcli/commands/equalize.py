"""equalize and ranges: cross-layer equalization and the per-channel weight-range view."""

from __future__ import annotations

import click
from rich.table import Table

from aimetcli.commands._options import (
    Output, all_rows_option, common_options, external_data_option, input_argument, model_output, simplify_option,
)
from aimetcli.commands._shared import load_input, preflight, save_output, shown_rows

TABLE_ROWS = 15

plot_option = click.option("--plot", "plot", type=str, default=None, metavar="FILE",
                           help="Draw per-channel weight ranges to FILE (.png, .svg or .html; needs matplotlib).")


def ranges_table(rows_before: list, rows_after: list | None = None) -> Table:
    """One row per layer of ``rows_before``, in the order given; a 'spread after' column with ``rows_after``."""
    table = Table(title="Per-channel weight ranges (spread = max/min of max|w| per output channel)",
                  title_justify="left")
    for col in ("layer", "op", "channels", "min range", "max range", "spread"):
        table.add_column(col, justify="right" if col not in ("layer", "op") else "left", overflow="fold")
    if rows_after is not None:
        table.add_column("spread after", justify="right")
    after = {r.layer: r for r in rows_after or []}
    for r in rows_before:
        nz = [x for x in r.ranges if x > 0] or [0.0]
        cells = [r.layer, r.op, str(r.channels), f"{min(nz):.3g}", f"{max(r.ranges):.3g}", f"{r.spread:.1f}"]
        if rows_after is not None:
            a = after.get(r.layer)
            cells.append(f"{a.spread:.1f}" if a else "-")
        table.add_row(*cells)
    return table


@click.command("equalize")
@input_argument
@model_output
@click.option("--keep-relu6", is_flag=True, help="Do not turn Clip(0,6) into Relu; chains stop at ReLU6.")
@click.option("--no-bias-absorption", is_flag=True, help="Skip high-bias absorption (scaling alone is exact).")
@plot_option
@simplify_option
@external_data_option
@all_rows_option("Every layer in the table and the --plot (default: the 15 and 16 of widest spread).")
@common_options
def equalize(out: Output, model_in: str, output: str, keep_relu6: bool, no_bias_absorption: bool,
             plot: str | None, simplify: bool, external_data: bool, show_all: bool) -> None:
    """Cross-layer equalization, as AIMET's equalize_model.

    Folds BatchNorm (keeping its statistics), turns ReLU6 inside scaling chains into
    ReLU, equalizes per-channel weight ranges of consecutive layers (Conv, depthwise
    Conv, ConvTranspose, Gemm, MatMul through Relu/PRelu/LeakyRelu or nothing) and
    absorbs high biases into the next layer.

    \b
    Examples:
      aimetcli equalize model.onnx -o eq.onnx --plot ranges.png
      aimetcli fold-bn model.onnx -o - | aimetcli equalize - -o eq.onnx
    """
    preflight(out, model_in, output=output, files=[plot] if plot else [])
    from aimetcli import api

    if plot:
        from aimetcli.plots import MAX_LAYERS, _pyplot, plot_ranges

        _pyplot()
    model = load_input(out, model_in, simplify=simplify, rewrites=True)
    summary = api.equalize(model, api.EqualizeOptions(replace_relu6=not keep_relu6,
                                                      high_bias_fold=not no_bias_absorption))
    save_output(out, model, output, external_data=external_data)
    if plot:
        plot_ranges(plot, [("before", summary.ranges_before), ("after", summary.ranges_after)],
                    limit=None if show_all else MAX_LAYERS)
        _wrote_plot(out, plot, len(summary.ranges_before), show_all)
    widest = sorted(summary.ranges_before, key=lambda r: -r.spread)
    out.info(ranges_table(shown_rows(out, widest, TABLE_ROWS, show_all, "layer"), summary.ranges_after))
    out.info(
        f"Folded {summary.folded_bn} BN, replaced {summary.relu6_replaced} ReLU6, scaled {summary.scaling_sets} "
        f"layer sets in {len(summary.chains)} chains ({summary.iterations} iterations), absorbed bias in "
        f"{len(summary.bias_absorbed)} pairs. Median range spread {summary.median_spread_before:.1f}x -> "
        f"{summary.median_spread_after:.1f}x."
    )
    if summary.relu6_replaced:
        out.info("Relu in place of ReLU6 changes the FP32 model wherever an activation exceeds 6 (the MobileNetV2 "
                 "sample: 28.8 dB output SQNR against the original, same top-1); `aimetcli evaluate` of the two "
                 "models measures it on your data, --keep-relu6 avoids it, and `ptq` keeps equalization only "
                 "where it helps.")
    if summary.unshared:
        out.warn(f"{len(summary.unshared)} weight(s) shared by several layers (the first: {summary.unshared[0]}) "
                 "are now a copy a layer, scaled differently: the model is larger by those copies")
    for stop in summary.stops:
        out.detail(f"chain stops at {stop.layer}: {stop.reason}")
    for layer, reason in summary.bias_skipped:
        out.detail(f"bias not absorbed from {layer}: {reason}")
    out.emit_json({"command": "equalize", "input": model_in, "output": output, **summary.to_json()})


def _wrote_plot(out: Output, plot: str, layers: int, show_all: bool) -> None:
    from aimetcli.plots import MAX_LAYERS

    shown = (f" ({MAX_LAYERS} of {layers} layers shown, those of widest spread; --all for every layer)"
             if layers > MAX_LAYERS and not show_all else "")
    out.info(f"Wrote {plot}{shown}")


@click.command("ranges")
@input_argument
@plot_option
@all_rows_option("Every layer in the --plot (default: the 16 of widest spread).")
@common_options
def ranges(out: Output, model_in: str, plot: str | None, show_all: bool) -> None:
    """Print per-layer, per-channel weight ranges; optionally plot them.

    A wide spread (max/min of the per-channel ranges) means per-tensor quantization
    wastes resolution on most channels: equalize or per-channel quantization help.

    \b
    Examples:
      aimetcli ranges model.onnx
      aimetcli ranges model.onnx --plot ranges.html
    """
    preflight(out, model_in, files=[plot] if plot else [])
    from aimetcli import api
    from aimetcli.records import jsonable

    if plot:
        from aimetcli.plots import MAX_LAYERS, _pyplot, plot_ranges

        _pyplot()
    model = load_input(out, model_in)
    rows = api.weight_ranges(model)
    if plot:
        plot_ranges(plot, [("ranges", rows)], limit=None if show_all else MAX_LAYERS)
        _wrote_plot(out, plot, len(rows), show_all)
    out.info(ranges_table(rows) if rows else _no_ranges(model))
    out.emit_json({"command": "ranges", "input": model_in,
                   "layers": [jsonable(r) for r in rows]})


def _no_ranges(model) -> str:
    """Why ``ranges`` has no row: the layers it found and the first one's reason, and the nodes
    inside If/Loop subgraphs (an empty table said nothing)."""
    from aimetcli import graph as g
    from aimetcli.layers import as_layer, check_weight

    reasons = [check_weight(la).reason for n in model.graph if (la := as_layer(n)) is not None]
    why = [f"{len(reasons)} Conv/ConvTranspose/Gemm/MatMul in the main graph, none with constant float "
           f"weights (the first: {reasons[0]})" if reasons else "no Conv, ConvTranspose, Gemm or MatMul in the main graph"]
    if integer_ops := g.integer_op_types(model):  # their weights are integers already
        why.append(f"the model is quantized with integer operators ({', '.join(integer_ops[:4])}: an onnxruntime "
                   "quantize_dynamic or QOperator output); show the float model it came from")
    if (flow := g.control_flow_nodes(model)) is not None:
        why.append(f"{flow.nodes} nodes inside the subgraphs of {flow.describe()}, which ranges does not read")
    return "No weight ranges to show: " + "; ".join(why) + "."


COMMANDS = [equalize, ranges]
