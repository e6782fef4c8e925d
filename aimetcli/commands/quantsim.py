"""quantsim and evaluate: QDQ simulation with AIMET encodings, and judging models on data."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from aimetcli.commands._options import (
    DataArgs, Output, QuantArgs, common_options, data_options, encoding_version_option, external_data_option,
    input_argument, model_output, quant_options,
)
from aimetcli.commands._shared import load_input, open_dataset, preflight, progress_bar, save_output
from aimetcli.errors import AimetCliError, ErrorKind

ORT_LEVELS = ("none", "basic", "all", "advised")  # runtime.JUDGED's names


def encodings_path(output: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    if output == "-":
        raise AimetCliError("with -o - give --encodings PATH for the encodings file", ErrorKind.USAGE)
    p = Path(output)
    return str(p.with_suffix(".encodings") if p.suffix == ".onnx" else Path(output + ".encodings"))


@click.command("quantsim")
@input_argument
@model_output
@click.option("--data", "data", required=True, help="Calibration data: .npy, .npz, image folder or random:N.")
@data_options
@quant_options
@click.option("--encodings", "encodings_out", default=None, help="Encodings file (default: OUTPUT with .encodings).")
@encoding_version_option
@external_data_option
@common_options
def quantsim(out: Output, model_in: str, output: str, data: str, encodings_out: str | None,
             encoding_version: str, external_data: bool, quant: QuantArgs, sampling: DataArgs) -> None:
    """Simulate quantization with QDQ nodes, calibrated with onnxruntime.

    Places quantizers as AIMET's QuantizationSimModel does (default config: inputs,
    op outputs and weights; supergroups fused; data movement unquantized), computes
    encodings on the calibration data and writes the QDQ model, which runs on stock
    onnxruntime, plus the encodings in AIMET's JSON format.

    \b
    Examples:
      aimetcli quantsim folded.onnx -o sim.onnx --data calib.npz
      aimetcli quantsim eq.onnx -o sim.onnx --data calib.npz --per-channel --param-bw 4
    """
    enc_path = encodings_path(output, encodings_out)
    preflight(out, model_in, output=output, files=[enc_path], encoding_version=encoding_version,
              bitwidths=quant.bitwidths(), config=quant.config_path, data=[("--data", data)])
    from aimetcli import api, model_io

    options = quant.options()
    model = load_input(out, model_in, float32=True)
    dataset = open_dataset(model, data, sampling, out=out)
    with progress_bar(out, dataset.num_batches(sampling.batch_size), "Calibrating") as bar:
        sim, encodings, summary = api.quantsim(model, dataset, options, sampling.run(bar, log=out.info))
    for w in summary.warnings:
        out.warn(w)
    text = api.encodings_json(encodings, options, encoding_version)
    save_output(out, sim, output, external_data=external_data)
    model_io.write_text_atomic(Path(enc_path), text)
    out.info(f"Wrote {enc_path} (encodings {encoding_version})")
    out.info(
        f"{summary.activation_quantizers} activation and {summary.param_quantizers} weight quantizers "
        f"(W{options.param_bw}A{options.act_bw}, {options.scheme.value}), calibrated on {summary.samples} samples "
        f"in {summary.calibration_seconds:.2f} s."
    )
    for item in summary.skipped:
        out.detail(f"not quantized: {item['tensor']}: {item['reason']}")
    out.emit_json({"command": "quantsim", "input": model_in, "output": output, "encodings": enc_path,
                   **summary.to_json()})


@click.command("evaluate")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL]")
@click.option("--data", "data", required=True, help="Evaluation data: .npy, .npz, image folder or random:N.")
@click.option("--labels", "labels_key", default=None, help="Key of the labels in the .npz (default: label/labels/y).")
@click.option("--ort-optimization", default="none", show_default=True, metavar="[none|basic|all|advised][,...]",
              help="onnxruntime graph optimization: none runs QDQ as exact float emulation (the simulation); basic "
                   "folds constants and fuses nodes but keeps QDQ in float; all lets onnxruntime use integer "
                   "kernels as a deployment would; advised is all with the session options export names for "
                   "model_qdq.onnx (what ptq's table scores). One value, or one per model: none,all.")
@data_options
@common_options
def evaluate(out: Output, models: tuple[str, ...], data: str, labels_key: str | None, ort_optimization: str,
             sampling: DataArgs) -> None:
    """Top-1 accuracy of one or two models; for two, how far their outputs are apart.

    \b
    Examples:
      aimetcli evaluate model.onnx --data eval.npz --labels label
      aimetcli evaluate model.onnx sim.onnx --data eval.npz
    """
    if len(models) > 2:
        raise AimetCliError("evaluate takes one or two models", ErrorKind.USAGE)
    levels = ort_optimization.split(",")
    if len(levels) == 1:
        levels = levels * len(models)
    if len(levels) != len(models) or any(lv not in ORT_LEVELS for lv in levels):
        raise AimetCliError(f"--ort-optimization {ort_optimization}: give {', '.join(ORT_LEVELS)}, once or per "
                            "model", ErrorKind.USAGE)
    preflight(out, models, data=[("--data", data)])
    from aimetcli import api

    loaded = [load_input(out, m) for m in models]
    dataset = open_dataset(loaded[0], data, sampling, labels_key=labels_key, out=out, scored=True)
    with progress_bar(out, dataset.num_batches(sampling.batch_size), "Evaluating") as bar:
        summary = api.evaluate(loaded, dataset, sampling.run(bar), optimization=levels, names=list(models))
    first = loaded[0].graph.outputs[0].name if loaded[0].graph.outputs else None
    scored = f", top-1 from output {summary.scored_output}" if summary.scored_output not in (None, first) else ""
    table = Table(title=f"Evaluation on {summary.samples} samples{scored}", title_justify="left")
    table.add_column("model")
    table.add_column("top-1 %", justify="right")
    for name, acc in zip(summary.models, summary.top1):
        table.add_row(name, "-" if acc is None else f"{acc:.2f}")
    out.info(table)
    for c in summary.comparisons:
        out.info(f"output {c.output}: SQNR {c.sqnr_db:.2f} dB, max abs error {c.max_abs_error:.4g}")
    if summary.top1_agreement is not None:
        out.info(f"top-1 agreement: {summary.top1_agreement:.2f}%")
    for name, level in zip(models, levels):
        out.detail(f"{name}: onnxruntime graph optimization '{level}'"
                   + (" (QDQ emulated exactly in float)" if level == "none" else ""))
    out.detail(f"{summary.samples} samples in {summary.seconds:.2f} s; top-1 and SQNR read output "
               f"{summary.scored_output or first}" + ("; no labels, so no top-1" if all(
                   a is None for a in summary.top1) else ""))
    out.emit_json({"command": "evaluate", **summary.to_json()})


COMMANDS = [quantsim, evaluate]
