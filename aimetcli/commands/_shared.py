"""Steps shared by the commands: up-front checks, loading and saving, data, progress.

The options they share are in commands/_options.py.

Nothing heavy is imported at module level (the library is imported inside the
functions that use it), so a command's ``--help`` and usage errors stay instant.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aimetcli import paths
from aimetcli.commands._options import DataArgs, Output, require_distinct_stdout
from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.paths import STDIO

if TYPE_CHECKING:
    import onnx_ir as ir


# -- up-front checks ------------------------------------------------------------------
def stream_is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def preflight(out: Output, sources: str | Sequence[str], *, output: str | None = None,
              output_is_dir: bool = False, files: Sequence[str] = (),
              encoding_version: str | None = None, bitwidths: Sequence[int] = (),
              config: str | None = None, data: Sequence[tuple[str, str | None]] = ()) -> None:
    """Every check that needs neither the model nor the data, before anything is loaded.

    ``sources``: the input models ('-' is stdin, refused when it is a terminal).
    ``output``: the output model file or, with ``output_is_dir`` (ptq, export), the
    output directory ('-' refused: a directory cannot go to stdout). ``files``: other
    files the command will write (encodings, plots). ``encoding_version`` and
    ``bitwidths``: the encodings file format must hold these bitwidths
    (:func:`aimetcli.encodings_types.check_bitwidth`, the rule the writer applies).
    ``config``: a quantsim config file, read and validated now (it is small).
    ``data``: (option, source) pairs such as ('--data', 'calib.npz'); a path must exist.
    Paths: parent directory exists, location writable, not the input model.
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    if STDIO in sources and stream_is_terminal(sys.stdin):
        raise AimetCliError("MODEL is '-' but stdin is a terminal; pipe a model in (cat m.onnx | aimetcli ...) "
                            "or give its path", ErrorKind.USAGE)
    for path in sources:
        paths.check_input_model(path)
    source = sources[0] if len(sources) == 1 else None
    if output is not None:
        _check_output(out, output, source, output_is_dir)
    for path in files:
        paths.check_output_path(path, source=source)
    for option, spec in data:
        if spec is not None:
            paths.check_data_source(option, spec)
    if encoding_version is not None:
        from aimetcli.encodings_types import check_bitwidth

        for bw in sorted(set(bitwidths)):
            try:
                check_bitwidth(encoding_version, bw)
            except ValueError:
                raise AimetCliError(
                    f"--encoding-version {encoding_version} cannot hold {bw}-bit encodings (it has no bitwidth "
                    "field: 4, 8, 16 or 32 bits only); use --encoding-version 1.0.0", ErrorKind.USAGE) from None
    if config is not None:
        from aimetcli.quantsim.config import load_config

        load_config(config)


def _check_output(out: Output, output: str, source: str | None, output_is_dir: bool) -> None:
    if output == STDIO:
        if output_is_dir:
            raise AimetCliError("-o -: this command writes a directory of files (model.onnx, model.encodings, "
                                "model_qdq.onnx, ...), which cannot go to stdout; give a directory, e.g. -o out/",
                                ErrorKind.USAGE)
        require_distinct_stdout(out, output)
        if stream_is_terminal(sys.stdout):
            raise AimetCliError("-o -: stdout is a terminal; redirect it (> out.onnx, | aimetcli ...) "
                                "or give -o FILE", ErrorKind.USAGE)
    elif output_is_dir:
        paths.check_output_dir(output, source=source)
    else:
        paths.check_output_path(output, source=source)


# -- loading and saving ---------------------------------------------------------------
def load_input(out: Output, source: str, *, simplify: bool = False,
               float32: bool = False, rewrites: bool = False) -> ir.Model:
    """Load the input model (after :func:`preflight` checked its paths). ``float32`` (commands that
    quantize): a float16/bfloat16 model is upcast, and an already quantized model refused.
    ``rewrites`` (fold-bn, equalize, bias-correct, adaround): a warning for the latter, and for
    nodes inside If/Loop/Scan subgraphs, which the rewrites leave alone."""
    from aimetcli import api
    from aimetcli import graph as g

    model, report = api.load(source, simplify=simplify, float32=float32)
    if float32:
        api.require_float_model(model)
    elif rewrites and (quantized := g.quantized_nodes(model)):
        out.warn(f"the model is already quantized ({quantized} QuantizeLinear/DequantizeLinear or integer nodes): "
                 "layers whose weights come through DequantizeLinear are left as they are; rewrite the float "
                 "model instead")
    if rewrites and (flow := g.control_flow_nodes(model)) is not None:
        out.warn(f"{flow.nodes} nodes inside the subgraphs of {flow.describe()} are left as they are: "
                 "only the main graph is rewritten; export the model without the control flow to rewrite them")
    for w in report.warnings:
        out.warn(w)
    if report.lifted_constants:
        out.detail("Lifted Constant-node tensors to initializers.")
    if report.shape_inference_error:
        out.detail(f"Shape inference incomplete: {report.shape_inference_error}")
    return model


def save_output(out: Output, model: ir.Model, output: str, *, external_data: bool = False) -> list[str]:
    from aimetcli import model_io

    written = model_io.save_model(model, output, external_data=external_data or None)
    if output != "-":
        out.info(f"Wrote {', '.join(written)}")
    return written


def shown_rows(out: Output, rows: list, limit: int, show_all: bool, what: str) -> list:
    """The first ``limit`` rows unless --all or -v; says so when rows are left out
    (``what``: the singular noun of a row, e.g. 'layer')."""
    if show_all or out.verbose or len(rows) <= limit:
        return rows
    out.info(f"{limit} of {len(rows)} {what}s shown, --all for every {what}")
    return rows[:limit]


# -- calibration / evaluation data ---------------------------------------------------
def open_dataset(model: ir.Model, spec: str, sampling: DataArgs, *, labels_key: str | None = None,
                 out: Output | None = None, scored: bool = False):
    """Open ``--data`` for ``model`` as ``sampling`` says; its notes go to ``out.detail`` (-v), its
    warnings (what was assumed) to ``out.warn`` when the data is first read (after the command's
    checks).
    ``scored``: the data will be scored (evaluate, ptq's evaluation set), so labels left out
    are worth a warning, and random data's poor ranges are not (they matter to calibration
    only)."""
    from aimetcli.calibration import data as data_mod

    dataset = data_mod.open_data(spec, data_mod.input_specs(model), num_samples=sampling.num_samples,
                                 labels_key=labels_key, images=sampling.images(), seed=sampling.seed)
    if out is not None:
        warnings = [*dataset.warnings, *(() if scored else dataset.calibration_warnings)]

        def warn() -> None:
            for warning in warnings:
                out.warn(warning)

        dataset.on_first_read(warn)
        for note in dataset.notes:
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

    def describe(self, text: str) -> None:
        """Say which step runs now (the library calls it before a long step that ticks once)."""
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False
