"""export: the files users ship."""

from __future__ import annotations

import click

from aimetcli.commands._options import Output, common_options, encoding_version_option, input_argument, target_option
from aimetcli.commands._shared import load_input, preflight
from aimetcli.errors import AimetCliError, ErrorKind


def render_export(out: Output, summary) -> None:
    ratio = summary.fp32_bytes / max(1, summary.qdq_bytes)
    # a tiny model's QDQ nodes can outweigh what its integer weights save
    if summary.param_encodings:
        as_large, larger = ("its QDQ nodes weigh about what the integer weights save",
                            "its QDQ nodes outweigh the integer weights")
    else:
        as_large = larger = "no weight is stored as integers"
    if round(ratio, 1) == 1.0 or round(1 / ratio, 1) == 1.0:
        size = f"about the size of model.onnx ({as_large})"
    elif ratio > 1:
        size = f"{ratio:.1f}x smaller than model.onnx"
    else:
        size = f"{summary.qdq_bytes / max(1, summary.fp32_bytes):.1f}x larger than model.onnx ({larger})"
    out.info(f"Wrote {summary.directory}/: {', '.join(summary.files)}")
    out.info(f"{summary.activation_encodings} activation and {summary.param_encodings} param encodings "
             f"({summary.encodings_version}); model_qdq.onnx is {summary.qdq_bytes / 1e6:.2f} MB, {size}.")
    if out.verbose:
        render_details(out, summary.directory)


def render_details(out: Output, directory: str) -> None:
    """-v: the tensors left unquantized and why, as the report.json just written lists them."""
    import json
    from pathlib import Path

    skipped = json.loads((Path(directory) / "report.json").read_text()).get("not_quantized", [])
    for item in skipped:
        out.detail(f"not quantized: {item.get('tensor')}: {item.get('reason')}")
    if not skipped:
        out.detail("report.json lists no tensor left unquantized")


@click.command("export")
@input_argument
@click.option("-o", "--output", "output", required=True, help="Output directory (created if missing).")
@click.option("--encodings", "encodings_path", default=None,
              help="Encodings file for an FP32 MODEL (default: those embedded by quantsim).")
@encoding_version_option
@click.option("--signed-weights", is_flag=True,
              help="Keep int8 weights in model_qdq.onnx (default uint8 with zero point 128: same grid, avoids "
                   "onnxruntime's u8s8 saturation on CPUs without VNNI).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Write static shapes: the inputs' dynamic batch dim (dim 0) becomes N in both models, and "
                   "every shape is inferred again (QNN/SNPE converters want static shapes).")
@click.option("--force", is_flag=True,
              help="Export --encodings even when the model's weights do not fit them (a warning instead of "
                   "the refusal: such encodings belong to another version of the model).")
@target_option
@common_options
def export(out: Output, model_in: str, output: str, encodings_path: str | None, encoding_version: str,
           signed_weights: bool, batch_size: int | None, force: bool, target: str) -> None:
    """Write model.onnx + model.encodings (QNN/SNPE), model_qdq.onnx (onnxruntime) and report.json.

    \b
    Examples:
      aimetcli export sim.onnx -o deploy/
      aimetcli export model.onnx --encodings model.encodings -o deploy/ --encoding-version 0.6.1
      aimetcli export sim.onnx -o deploy/ --batch-size 1      # static shapes for qnn-onnx-converter
      aimetcli export sim.onnx -o deploy/ --target htp        # refuse what QNN's HTP cannot run
    """
    preflight(out, model_in, output=output, output_is_dir=True)
    from aimetcli import api

    if force and encodings_path is None:
        raise AimetCliError("--force applies to --encodings FILE only (a sim's own encodings always fit it)",
                            ErrorKind.USAGE)
    model = load_input(out, model_in)
    summary = api.export(model, output, encodings_path=encodings_path, version=encoding_version,
                           unsigned_weights=not signed_weights, batch_size=batch_size, force=force, target=target)
    for w in summary.warnings:
        out.warn(w)
    render_export(out, summary)
    if summary.batch_size is not None:
        out.info(f"Static shapes: the inputs' batch dim is {summary.batch_size} in both models.")
    from aimetcli.records import jsonable

    out.emit_json({"command": "export", "input": model_in, **jsonable(summary)})


COMMANDS = [export]
