"""fold-bn: fold BatchNormalization into neighbouring layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.table import Table

from aimetcli.commands._options import (
    Output, all_rows_option, common_options, external_data_option, input_argument, model_output, simplify_option,
)
from aimetcli.commands._shared import load_input, preflight, save_output

if TYPE_CHECKING:
    from aimetcli import api

FOLD_ROWS = 20


def render_fold(out: Output, summary: api.FoldBnSummary, show_all: bool = False) -> None:
    if summary.folded:
        table = Table(title=f"Folded {len(summary.folded)} BatchNormalization", title_justify="left")
        for col in ("BatchNorm", "into layer", "direction", "channels"):
            table.add_column(col, overflow="fold")
        for p in summary.folded:
            table.add_row(p.bn, p.layer, p.direction, str(p.channels))
        if show_all or out.verbose or len(summary.folded) <= FOLD_ROWS:
            out.info(table)
        else:
            out.info(f"Folded {len(summary.folded)} BatchNormalization (--all lists them).")
    if summary.skipped:
        table = Table(title=f"Left {len(summary.skipped)} BatchNormalization in place", title_justify="left")
        table.add_column("BatchNorm", overflow="fold")
        table.add_column("reason", overflow="fold")
        for s in summary.skipped:
            table.add_row(s.bn, s.reason)
        out.info(table)
    if summary.affine_folded:
        what = f"Folded {len(summary.affine_folded)} constant per-channel Add/Sub/Mul into the layer before it"
        if show_all or out.verbose or len(summary.affine_folded) <= FOLD_ROWS:
            table = Table(title=what, title_justify="left")
            for col in ("node", "op", "into layer", "channels"):
                table.add_column(col, overflow="fold")
            for a in summary.affine_folded:
                table.add_row(a.node, a.op, a.layer, str(a.channels))
            out.info(table)
        else:
            out.info(f"{what} (--all lists them).")
    if summary.affine_skipped:
        what = f"Left {len(summary.affine_skipped)} constant Add/Sub/Mul after a layer in place"
        if show_all or out.verbose or len(summary.affine_skipped) <= FOLD_ROWS:
            table = Table(title=what, title_justify="left")
            table.add_column("node", overflow="fold")
            table.add_column("reason", overflow="fold")
            for s in summary.affine_skipped:
                table.add_row(s.node, s.reason)
            out.info(table)
        else:
            out.info(f"{what} (--all lists them with the reason).")
    if not summary.folded and not summary.skipped and not summary.affine_folded:
        out.info("No BatchNormalization in the model.")


@click.command("fold-bn")
@input_argument
@model_output
@simplify_option
@external_data_option
@all_rows_option("List every folded BatchNormalization (default: a count when more than 20).")
@common_options
def fold_bn(out: Output, model_in: str, output: str, simplify: bool, external_data: bool, show_all: bool) -> None:
    """Fold BatchNormalization into Conv / ConvTranspose / Gemm / MatMul weights.

    Backward folds (layer then BN) are exact for any padding and groups; forward
    folds (BN then layer) only into unpadded, ungrouped layers. BNs that cannot be
    folded exactly are left in place and listed with the reason. The folded BN
    statistics are kept in the model's metadata for later high-bias absorption
    and analytical bias correction. A constant per-channel Add, Sub or Mul right
    after a layer (a bias or a BN as exporters spell them out) is folded into the
    layer's bias and weights too.

    \b
    Examples:
      aimetcli fold-bn model.onnx -o folded.onnx
      aimetcli fold-bn model.onnx folded.onnx
      cat model.onnx | aimetcli fold-bn - -o - | aimetcli equalize - -o eq.onnx
    """
    preflight(out, model_in, output=output)
    from aimetcli import api

    model = load_input(out, model_in, simplify=simplify, rewrites=True)
    _, summary = api.fold_bn(model)
    save_output(out, model, output, external_data=external_data)
    render_fold(out, summary, show_all)
    out.emit_json({"command": "fold-bn", "input": model_in, "output": output, **summary.to_json()})


COMMANDS = [fold_bn]
