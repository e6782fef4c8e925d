"""Options and steps shared by the commands: input, output, model options."""

from __future__ import annotations

import click
import onnx_ir as ir

from aimetcli import api, model_io
from aimetcli.cli import Output, require_distinct_stdout

input_argument = click.argument("model_in", metavar="MODEL", type=str)


def output_option(required: bool = True):
    return click.option(
        "-o", "--output", "output", required=required, type=str,
        help="Output model path, or '-' for stdout.",
    )


simplify_option = click.option(
    "--simplify", is_flag=True,
    help="Run onnxsim first (its BN fusion disabled); if onnxsim fails, go on without it.",
)
external_data_option = click.option(
    "--external-data", is_flag=True,
    help="Save tensors in '<output>.data' beside the model (automatic above 2 GB).",
)


def load_input(out: Output, source: str, output: str | None, *, simplify: bool = False) -> ir.Model:
    if output is not None:
        require_distinct_stdout(out, output)
        model_io.check_output_path(output, source=source)
    model, report = api.load(source, simplify=simplify)
    for w in report.warnings:
        out.warn(w)
    if report.lifted_constants:
        out.detail("Lifted Constant-node tensors to initializers.")
    if report.shape_inference_error:
        out.detail(f"Shape inference incomplete: {report.shape_inference_error}")
    return model


def save_output(out: Output, model: ir.Model, output: str, *, external_data: bool = False) -> list[str]:
    written = model_io.save_model(model, output, external_data=external_data or None)
    if output != "-":
        out.info(f"Wrote {', '.join(written)}")
    return written
