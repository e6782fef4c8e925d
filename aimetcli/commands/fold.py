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


def _listing(out: Output, title: str, columns: tuple[str, ...], rows: list[tuple], more: str | None) -> None:
    """``rows`` as a table titled ``title``; with ``more`` (the words after the title when rows are
    held back: --all, -v or at most FOLD_ROWS rows show them), the title and ``more`` only past that."""
    if more is not None and len(rows) > FOLD_ROWS:
        out.info(f"{title} ({more}).")
        return
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.info(table)


def render_fold(out: Output, summary: api.FoldBnSummary, show_all: bool = False) -> None:
    every = show_all or out.verbose
    if summary.folded:
        _listing(out, f"Folded {len(summary.folded)} BatchNormalization", ("BatchNorm", "into layer", "direction",
                                                                           "channels"),
                 [(p.bn, p.layer, p.direction, str(p.channels)) for p in summary.folded],
                 None if every else "--all lists them")
    if summary.skipped:
        _listing(out, f"Left {len(summary.skipped)} BatchNormalization in place", ("BatchNorm", "reason"),
                 [(s.bn, s.reason) for s in summary.skipped], None)
    if summary.affine_folded:
        _listing(out, f"Folded {len(summary.affine_folded)} constant per-channel Add/Sub/Mul into the layer before it",
                 ("node", "op", "into layer", "channels"),
                 [(a.node, a.op, a.layer, str(a.channels)) for a in summary.affine_folded],
                 None if every else "--all lists them")
    if summary.affine_skipped:
        _listing(out, f"Left {len(summary.affine_skipped)} constant Add/Sub/Mul after a layer in place",
                 ("node", "reason"), [(s.node, s.reason) for s in summary.affine_skipped],
                 None if every else "--all lists them with the reason")
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
