"""Options and steps shared by the commands: input, output, model options."""

from __future__ import annotations

import click
import onnx_ir as ir

from aimetcli import api, model_io
from aimetcli import graph as g
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


def load_input(out: Output, source: str, output: str | None, *, simplify: bool = False,
               float32: bool = False, rewrites: bool = False) -> ir.Model:
    """``float32`` (commands that quantize): a float16/bfloat16 model is upcast, and an already
    quantized model refused. ``rewrites`` (fold-bn, equalize): a warning for the latter."""
    if output is not None:
        require_distinct_stdout(out, output)
        model_io.check_output_path(output, source=source)
    model, report = api.load(source, simplify=simplify, float32=float32)
    if float32:
        api.require_float_model(model)
    elif rewrites and (quantized := g.quantized_nodes(model)):
        out.warn(f"the model is already quantized ({quantized} QuantizeLinear/DequantizeLinear or integer nodes): "
                 "layers whose weights come through DequantizeLinear are left as they are; rewrite the float "
                 "model instead")
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


# -- calibration / evaluation data ---------------------------------------------------
def data_options(func):
    """--data and the options describing it (shared by quantsim, bias-correct, evaluate, ptq)."""
    options = [
        click.option("--num-samples", type=click.IntRange(min=1), default=None,
                     help="Use at most this many samples."),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Samples per onnxruntime run."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for random:N data."),
        click.option("--resize", type=str, default=None, help="Image folders: resize to S or HxW."),
        click.option("--mean", type=str, default=None, help="Image folders: per-channel mean, e.g. 0.485,0.456,0.406."),
        click.option("--std", type=str, default=None, help="Image folders: per-channel std."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True,
                     help="Image folders: tensor layout."),
        click.option("--grayscale", is_flag=True, help="Image folders: read images as one channel."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def open_dataset(model: ir.Model, spec: str, *, num_samples=None, seed=0, resize=None, mean=None, std=None,
                 layout="NCHW", grayscale=False, labels_key=None, out: Output | None = None, scored: bool = False,
                 **_ignored):
    """``scored``: the data will be scored (evaluate, ptq's evaluation set), so labels left out
    are worth a warning; for calibration they are a detail."""
    from aimetcli.calibration import data as data_mod

    images = data_mod.ImageOptions(
        resize=data_mod.parse_resize(resize) if resize else None,
        mean=data_mod.parse_floats(mean, "--mean") if mean else (0.0,),
        std=data_mod.parse_floats(std, "--std") if std else (1.0,),
        layout=layout,
        grayscale=grayscale,
    )
    dataset = data_mod.open_data(spec, data_mod.input_specs(model), num_samples=num_samples,
                                 labels_key=labels_key, images=images, seed=seed)
    if out is not None:
        for note in getattr(dataset, "notes", []):
            out.detail(note)
        if dataset.labels_note:
            (out.warn if scored else out.detail)(dataset.labels_note)
    return dataset


class progress_bar:
    """A rich progress bar on stderr (hidden with --quiet or when stderr is not a terminal)."""

    def __init__(self, out: Output, total: int, description: str):
        self.out, self.total, self.description = out, total, description
        self._progress = None

    def __enter__(self):
        if self.out.show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.out.console, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def __call__(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False
