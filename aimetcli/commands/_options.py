"""The CLI's shared options, each written once, and the typed values they hand a command.

``common_options`` builds the :class:`Output` (-q/-v/--json/--debug, before or after the command
name); ``quant_options`` a :class:`QuantArgs`, ``data_options`` a :class:`DataArgs`: a command
receives those objects, never a ``**kw`` bag, so an option misspelt between the CLI and the
library is a TypeError in the tests rather than a silently ignored keyword. The light values
(plain strings and numbers) become the library's typed options (:class:`aimetcli.options.QuantOptions`,
:class:`aimetcli.options.RunOptions`) after the up-front checks, so that ``--help`` and usage
errors import no numpy (tests/test_cli_startup.py).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click
from rich.console import Console

from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.records import finite

if TYPE_CHECKING:
    from aimetcli.calibration.dataset import ImageOptions
    from aimetcli.options import QuantOptions, RunOptions


# -- output ---------------------------------------------------------------------------
@dataclass
class Output:
    """Where a command writes what it has to say."""

    quiet: bool = False
    verbose: bool = False
    json: bool = False
    debug: bool = False

    def __post_init__(self) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        if not self.console.is_terminal:  # logs and pipes: room for full tensor names
            self.console = Console(stderr=True, highlight=False, soft_wrap=True, width=160)

    @property
    def show_progress(self) -> bool:
        return not self.quiet and self.console.is_terminal

    def info(self, *objects) -> None:
        if not self.quiet:
            self.console.print(*objects)

    def detail(self, *objects) -> None:
        if self.verbose and not self.quiet:
            self.console.print(*objects)

    def warn(self, message: str) -> None:
        # Warnings are shown even with --quiet: they say a result may not be what was asked.
        self.console.print(f"[yellow]Warning:[/yellow] {message}")

    def emit_json(self, data: dict) -> None:
        if self.json:
            click.echo(json.dumps(finite(data), indent=2, sort_keys=True, allow_nan=False, default=str))


def _merge_flag(ctx: click.Context, name: str, value: bool) -> bool:
    parent = ctx.find_object(Output)
    return bool(value or (parent is not None and getattr(parent, name)))


def common_options(func):
    """-q/-v/--json/--debug, accepted both before and after the command name."""

    @click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
    @click.option("-v", "--verbose", is_flag=True, help="Print details: skipped nodes and why, every table row.")
    @click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
    @click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks.")
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx, quiet, verbose, as_json, debug, **kwargs):
        out = Output(
            quiet=_merge_flag(ctx, "quiet", quiet),
            verbose=_merge_flag(ctx, "verbose", verbose),
            json=_merge_flag(ctx, "json", as_json),
            debug=_merge_flag(ctx, "debug", debug),
        )
        ctx.obj = out
        return ctx.invoke(func, out, **kwargs)

    return wrapper


def require_distinct_stdout(out: Output, output: str) -> None:
    if out.json and output == "-":
        raise AimetCliError("--json and -o - both write to stdout; write the model to a file", ErrorKind.USAGE)


# -- models in and out -------------------------------------------------------------------
input_argument = click.argument("model_in", metavar="MODEL", type=str)


def model_output(func):
    """The output model: ``-o FILE`` or a positional OUTPUT after MODEL, as onnxsim and
    onnxslim take it (``aimetcli fold-bn in.onnx out.onnx``); exactly one of the two.
    The command receives it as ``output``."""

    @click.argument("output_arg", metavar="[OUTPUT]", required=False)
    @click.option("-o", "--output", "output_opt", type=str, default=None,
                  help="Output model path, or '-' for stdout (or give it as OUTPUT after MODEL).")
    @functools.wraps(func)
    def wrapper(*args, output_opt: str | None, output_arg: str | None, **kwargs):
        if output_opt is not None and output_arg is not None:
            raise AimetCliError(f"two outputs given (-o {output_opt} and {output_arg}); give one",
                                ErrorKind.USAGE)
        if output_opt is None and output_arg is None:
            raise AimetCliError("no output given: add -o FILE (or OUTPUT after MODEL, as in "
                                "'aimetcli fold-bn in.onnx out.onnx'); '-o -' writes to stdout", ErrorKind.USAGE)
        return func(*args, output=output_opt if output_opt is not None else output_arg, **kwargs)

    return wrapper


def all_rows_option(help_text: str):
    """--all: tables and plots that show their first rows show every row."""
    return click.option("--all", "show_all", is_flag=True, help=help_text)


simplify_option = click.option(
    "--simplify", is_flag=True,
    help="Run onnxsim first (its BN fusion disabled); if onnxsim fails, go on without it.",
)
external_data_option = click.option(
    "--external-data", is_flag=True,
    help="Save tensors in '<output>.data' beside the model (automatic above 2 GB).",
)
encoding_version_option = click.option(
    "--encoding-version", type=click.Choice(["0.6.1", "1.0.0", "2.0.0"]), default="1.0.0", show_default=True,
    help="AIMET encodings file format: 1.0.0 (AIMET 1.x lists, any bitwidth), 0.6.1 (older readers), "
         "2.0.0 (y_scale/y_zero_point, 4/8/16/32 bits only).",
)


# -- quantization ---------------------------------------------------------------------
AUTO_SCHEME = "auto"
# aimetcli.kernels.quant.QuantScheme's values, spelled here so that --help imports no numpy
# (tests/test_cli_startup.py checks that the two agree).
SCHEMES = ("min-max", "tf-enhanced", "percentile")
# aimetcli.options.WeightRange's values (checked against it in tests/test_seqmse.py)
WEIGHT_RANGES = ("minmax", "mse")


def normalize_scheme(value: str) -> str:
    """AIMET's spellings of a scheme as ours: tf_enhanced, post_training_tf_enhanced -> tf-enhanced;
    tf, post_training_tf, min_max -> min-max; post_training_percentile -> percentile."""
    name = value.strip().lower().replace("_", "-")
    name = name.removeprefix("post-training-")
    return "min-max" if name == "tf" else name


class SchemeChoice(click.Choice):
    """A --quant-scheme choice that also takes AIMET's spellings (see :func:`normalize_scheme`)."""

    def convert(self, value, param, ctx):
        return super().convert(normalize_scheme(value) if isinstance(value, str) else value, param, ctx)


@dataclass(frozen=True)
class QuantArgs:
    """The quantization as given on the command line (:func:`quant_options` builds it). ``scheme``
    may be 'auto' (ptq); ``config_path`` is read by the up-front checks first, then by
    :meth:`options`."""

    param_bw: int
    act_bw: int
    per_channel: bool | None
    param_symmetric: bool | None
    act_symmetric: bool | None
    scheme: str
    percentile: float
    config_path: str | None
    exclude: tuple[str, ...] = ()
    bits: tuple[str, ...] = ()  # --bits PATTERN=SPEC, parsed by options()
    target: str = "generic"  # --target (aimetcli/targets.py)
    weight_range: str = "minmax"

    def bitwidths(self) -> tuple[int, ...]:
        """Every bitwidth asked for (the encodings version is checked against them up front)."""
        found = [int(b) for text in self.bits for b in re.findall(r"[wa](\d+)", text.rpartition("=")[2].lower())]
        return (self.param_bw, self.act_bw, *found)

    @property
    def auto_scheme(self) -> bool:
        return self.scheme == AUTO_SCHEME

    def options(self) -> QuantOptions:
        """The library's QuantOptions, the config loaded ('auto' gives min-max here: ptq tries the
        others itself)."""
        from aimetcli.kernels.quant import QuantScheme
        from aimetcli.options import QuantOptions, WeightRange
        from aimetcli.quantsim.config import load_config
        from aimetcli.quantsim.per_layer import BitsRule

        scheme = QuantScheme.MIN_MAX if self.auto_scheme else QuantScheme(self.scheme)
        return QuantOptions(param_bw=self.param_bw, act_bw=self.act_bw, per_channel=self.per_channel,
                            param_symmetric=self.param_symmetric, act_symmetric=self.act_symmetric,
                            scheme=scheme, percentile=self.percentile, config=load_config(self.config_path),
                            exclude=self.exclude, bits=tuple(BitsRule.parse(text) for text in self.bits),
                            target=self.target, weight_range=WeightRange(self.weight_range))


# aimetcli.targets.NAMES, spelled here so that --help imports no numpy (tests/test_targets.py checks
# that the two agree)
TARGET_NAMES = ("generic", "htp", "onnxruntime")
target_option = click.option(
    "--target", type=click.Choice(TARGET_NAMES), default="generic", show_default=True,
    help="The runtime the model is for: refuse bitwidths and grids it cannot run (htp: W8A8, W8A16, W16A16, "
         "W4A8, W4A16, per-channel weights symmetric; onnxruntime: weights 4/8/16, activations 8/16 bits; "
         "generic: anything).")


def quant_options(func=None, *, auto_scheme: bool = False):
    """Options that define the quantization (shared by quantsim, bias-correct, ptq); the command
    receives them as ``quant``, a :class:`QuantArgs`.

    ``auto_scheme`` (ptq): ``--quant-scheme`` also takes 'auto', its default, which tries the
    schemes of :func:`aimetcli.api.scheme_candidates` and keeps the best.
    """
    if func is None:
        return functools.partial(quant_options, auto_scheme=auto_scheme)
    aimet_names = " AIMET's names (tf, tf_enhanced, post_training_percentile, ...) are accepted too."
    if auto_scheme:
        scheme = click.option("--quant-scheme", type=SchemeChoice([AUTO_SCHEME, *SCHEMES]), default=AUTO_SCHEME,
                              show_default=True,
                              help="How ranges are chosen (tf-enhanced: AIMET's SQNR search; auto: min-max and "
                                   "tf-enhanced both tried, the one closer to FP32 on the calibration data kept)."
                                   + aimet_names)
    else:
        scheme = click.option("--quant-scheme", type=SchemeChoice(SCHEMES), default="min-max", show_default=True,
                              help="How ranges are chosen (tf-enhanced: AIMET's SQNR search)." + aimet_names)
    options = [
        click.option("--param-bw", type=click.IntRange(2, 16), default=8, show_default=True, help="Weight bitwidth."),
        click.option("--act-bw", type=click.IntRange(2, 16), default=8, show_default=True,
                     help="Activation bitwidth."),
        click.option("--per-channel/--per-tensor", "per_channel", default=None,
                     help="Per-channel weight quantization (default: as the config says, per-tensor)."),
        click.option("--param-symmetric/--param-asymmetric", "param_symmetric", default=None,
                     help="Weight symmetry (default: symmetric, from the config)."),
        click.option("--act-symmetric/--act-asymmetric", "act_symmetric", default=None,
                     help="Activation symmetry (default: asymmetric, from the config)."),
        scheme,
        click.option("--percentile", type=click.FloatRange(50.0, 100.0), default=99.99, show_default=True,
                     help="Percentile for --quant-scheme percentile."),
        click.option("--config", "config_path", type=str, default=None,
                     help="AIMET quantsim config JSON (default: the one shipped, AIMET's default)."),
        click.option("--exclude", "exclude", multiple=True, metavar="PATTERN",
                     help="Keep float (no quantizer on its weights or outputs): a node name, a glob such as "
                          "'head/*', an op type such as Softmax, or a tensor name. Repeatable."),
        click.option("--bits", "bits", multiple=True, metavar="PATTERN=SPEC",
                     help="Other bitwidths for what PATTERN names (as --exclude): SPEC w4 (weights), a16 "
                          "(outputs) or w8a16. Repeatable; later rules win."),
        target_option,
        click.option("--weight-range", type=click.Choice(WEIGHT_RANGES), default="minmax", show_default=True,
                     help="Weight ranges: minmax (by --quant-scheme, as every range) or mse (AIMET's SeqMSE: per "
                          "layer, in order, the range among 20 fractions of min-max that minimises the layer's "
                          "output error on --data; the grids are frozen in the model)."),
    ]

    @functools.wraps(func)
    def wrapper(*args, param_bw: int, act_bw: int, per_channel: bool | None, param_symmetric: bool | None,
                act_symmetric: bool | None, quant_scheme: str, percentile: float, config_path: str | None,
                exclude: tuple[str, ...], bits: tuple[str, ...], target: str, weight_range: str, **kwargs):
        quant = QuantArgs(param_bw, act_bw, per_channel, param_symmetric, act_symmetric, quant_scheme, percentile,
                          config_path, tuple(exclude), tuple(bits), target, weight_range)
        return func(*args, quant=quant, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


# -- calibration / evaluation data ---------------------------------------------------
@dataclass(frozen=True)
class DataArgs:
    """How to read --data (and --eval), and the batch size (:func:`data_options` builds it)."""

    num_samples: int | None
    batch_size: int
    seed: int
    resize: str | None
    center_crop: str | None
    mean: str | None
    std: str | None
    layout: str
    grayscale: bool

    def images(self) -> ImageOptions:
        """The image-folder preprocessing, the option texts parsed."""
        from aimetcli.calibration import data as data_mod

        return data_mod.image_options(resize=self.resize or None, center_crop=self.center_crop or None,
                                      mean=self.mean or None, std=self.std or None, layout=self.layout,
                                      grayscale=self.grayscale)

    def run(self, progress=None, log=None) -> RunOptions:
        """The library's RunOptions: this batch size, ``progress`` and ``log`` (lines per layer)."""
        from aimetcli.options import RunOptions

        return RunOptions(batch_size=self.batch_size, progress=progress, log=log)


def data_options(func):
    """The options describing --data (shared by quantsim, bias-correct, evaluate, ptq); the
    command receives them as ``sampling``, a :class:`DataArgs`."""
    options = [
        click.option("--num-samples", type=click.IntRange(min=1), default=None,
                     help="Use at most this many samples."),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Samples per onnxruntime run."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for random:N data."),
        click.option("--resize", type=str, default=None,
                     help="Image folders: resize to HxW (S: SxS); with --center-crop, S is the shorter side "
                          "(aspect ratio kept)."),
        click.option("--center-crop", type=str, default=None,
                     help="Image folders: take the centered S or HxW crop after scaling, aspect ratio kept "
                          "(ImageNet: --resize 256 --center-crop 224)."),
        click.option("--mean", type=str, default=None, help="Image folders: per-channel mean, e.g. 0.485,0.456,0.406."),
        click.option("--std", type=str, default=None, help="Image folders: per-channel std."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True,
                     help="Image folders: tensor layout."),
        click.option("--grayscale", is_flag=True, help="Image folders: read images as one channel."),
    ]

    @functools.wraps(func)
    def wrapper(*args, num_samples: int | None, batch_size: int, seed: int, resize: str | None,
                center_crop: str | None, mean: str | None, std: str | None, layout: str, grayscale: bool, **kwargs):
        sampling = DataArgs(num_samples, batch_size, seed, resize, center_crop, mean, std, layout, grayscale)
        return func(*args, sampling=sampling, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


# -- mixed precision under a budget (ptq) ----------------------------------------------
@dataclass(frozen=True)
class AmpArgs:
    """ptq's budget options (:func:`amp_options` builds it); ``options()`` is None without a budget."""

    max_drop: float | None
    min_sqnr: float | None
    candidates: str | None
    cost: str = "bitops"

    @property
    def asked(self) -> bool:
        return self.max_drop is not None or self.min_sqnr is not None

    def check(self) -> None:
        """The usage error that needs no model (ptq_amp.check_amp has the others)."""
        if self.candidates and not self.asked:
            raise AimetCliError("--amp-candidates needs a budget: --max-drop or --min-sqnr", ErrorKind.USAGE)
        if self.cost != "bitops" and not self.asked:
            raise AimetCliError("--amp-cost needs a budget: --max-drop or --min-sqnr", ErrorKind.USAGE)

    def options(self):
        """The library's AmpOptions, or None when no budget was given."""
        if not self.asked:
            return None
        from aimetcli.kernels.amp_search import Candidate
        from aimetcli.options import AmpCost, AmpOptions

        texts = [t for t in (self.candidates or "").split(",") if t.strip()]
        return AmpOptions(self.max_drop, self.min_sqnr, tuple(Candidate.parse(t) for t in texts), AmpCost(self.cost))


def amp_options(func):
    """ptq's accuracy budget for mixed precision; the command receives it as ``amp``, an :class:`AmpArgs`."""
    options = [
        click.option("--max-drop", type=click.FloatRange(min=0), default=None, metavar="POINTS",
                     help="Mixed precision: the cheapest per-layer bitwidths whose top-1 stays within POINTS of "
                          "FP32, measured on the --eval data with --labels (as AIMET's AMP eval callback)."),
        click.option("--min-sqnr", type=float, default=None, metavar="DB",
                     help="Mixed precision without labels: the cheapest per-layer bitwidths whose output SQNR "
                          "against FP32 on the --eval data (else the calibration data) is at least DB."),
        click.option("--amp-candidates", "amp_candidates", default=None, metavar="LIST",
                     help="Bitwidth candidates of each layer, e.g. w4a8,w8a8,w8a16,float [default: the "
                          "--param-bw/--act-bw pair, W8A8 and W8A16 where wider, float]."),
        click.option("--amp-cost", "amp_cost", type=click.Choice(["bitops", "activations"]), default="bitops",
                     show_default=True,
                     help="What mixed precision saves: bit-operations (MACs x weight bits x input bits, AIMET's "
                          "cost) or activations above the base bitwidth, each counted once (fewest 16-bit "
                          "activations)."),
    ]

    @functools.wraps(func)
    def wrapper(*args, max_drop: float | None, min_sqnr: float | None, amp_candidates: str | None, amp_cost: str,
                **kwargs):
        return func(*args, amp=AmpArgs(max_drop, min_sqnr, amp_candidates, amp_cost), **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
