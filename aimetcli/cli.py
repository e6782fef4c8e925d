"""The ``aimetcli`` command group: the command table, the group-level flags and error handling.

Commands (in aimetcli/commands/) are thin: parse options, make one library call
(aimetcli.api), render the result. The options they share and the :class:`Output` they
write through live in aimetcli/commands/_options.py, so that no module imports this one.
Human output goes to stderr through rich, so stdout stays free for ``-o -`` model bytes or
the ``--json`` summary.

Start-up: the group knows each command's name, module and one-line help
(:data:`COMMANDS`) and imports a command's module only when that command is
looked up (click's lazy-group pattern), so ``--help``, ``--version`` and usage
errors import neither onnx, onnx-ir, onnxruntime nor numpy. Nothing heavy is
imported at module level here or in commands/_shared.py and commands/_options.py.

Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted (Ctrl-C),
141 standard output closed early (``| head``), as a process killed by SIGPIPE.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import Iterator, MutableMapping

import click

from aimetcli import __version__, _lazy_sympy

# The command line's start-up only: onnx-ir's sympy import is deferred until used (most of a
# command's start-up time otherwise); a library caller imports onnx-ir as it is.
_lazy_sympy.install()

from aimetcli.commands._options import Output  # noqa: E402
from aimetcli.errors import AimetCliError  # noqa: E402

BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for `cmd | head` killed by the signal

# name -> (module in aimetcli.commands, attribute, one-line help), in workflow order:
# the order of the top-level help and of its "Typical flow". The one-line help is the first
# line of the command's docstring (tests/test_cli_startup.py keeps the two equal).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "ptq": ("ptq", "ptq", "Fold BN, choose the quantization, equalize, adaround, bias-correct, calibrate and export."),
    "fold-bn": ("fold", "fold_bn", "Fold BatchNormalization into Conv / ConvTranspose / Gemm / MatMul weights."),
    "equalize": ("equalize", "equalize", "Cross-layer equalization, as AIMET's equalize_model."),
    "adaround": ("adaround", "adaround", "Learn whether each weight rounds up or down (AdaRound), without torch."),
    "bias-correct": ("bias", "bias_correct", "Correct the biases for the shift that weight quantization causes."),
    "quantsim": ("quantsim", "quantsim", "Simulate quantization with QDQ nodes, calibrated with onnxruntime."),
    "evaluate": ("quantsim", "evaluate",
                 "Top-1 accuracy of one or two models; for two, how far their outputs are apart."),
    "export": ("export", "export",
               "Write model.onnx + model.encodings (QNN/SNPE), model_qdq.onnx (onnxruntime) and report.json."),
    "ranges": ("equalize", "ranges", "Print per-layer, per-channel weight ranges; optionally plot them."),
    "analyze": ("analyze", "analyze", "Per quantizer: the output's SQNR with only it on, and with all but it on."),
}

# Options users reach for that aimetcli spells differently: the "No such option" error names ours.
OPTION_HINTS = {
    "--bitwidth": "--param-bw (weights) and --act-bw (activations)",
    "--bw": "--param-bw (weights) and --act-bw (activations)",
    "--weight-bw": "--param-bw",
    "--activation-bw": "--act-bw",
    "--output-dir": "-o DIR",
    "--calib": "--data",
    "--calibration-data": "--data",
}


class _LazyCommands(MutableMapping):
    """The group's ``commands`` mapping: every name of :data:`COMMANDS` is known, and a command's
    module is imported the first time its value is read."""

    def __init__(self) -> None:
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            if name not in COMMANDS:
                raise KeyError(name)
            module, attr, _ = COMMANDS[name]
            self._loaded[name] = getattr(importlib.import_module(f"aimetcli.commands.{module}"), attr)
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (n for n in self._loaded if n not in COMMANDS)

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._loaded))

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._loaded


class AimetGroup(click.Group):
    """Commands loaded on use, listed in workflow order; library errors become one line and an
    exit code; Ctrl-C 130; a closed standard output a quiet 141."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS`' one-line helps: no command module is imported."""
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AimetCliError as exc:
            if _debug(ctx):
                raise
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was written.", err=True)
            ctx.exit(130)
        except click.NoSuchOption as exc:
            raise _with_hint(exc) from None
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            _quiet_broken_pipe(ctx)
        except MemoryError:
            click.echo("Error: out of memory; use a smaller --batch-size or --num-samples", err=True)
            ctx.exit(1)
        except OSError as exc:  # the file system refused late (read-only, full, removed): still one line
            if _debug(ctx):
                raise
            if exc.errno == errno.EPIPE:
                _quiet_broken_pipe(ctx)
            where = f"{exc.filename}: " if exc.filename else ""
            reason = exc.strerror or str(exc)
            click.echo(f"Error: {where}{reason}; the output was not written: check the location's permissions "
                       "and free space, or choose another output path", err=True)
            ctx.exit(1)
        except Exception as exc:  # a bug: still one line, never a traceback unless asked
            if _debug(ctx):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(
                f"Error: internal error ({type(exc).__name__}: {first}); rerun with --debug and report it",
                err=True,
            )
            ctx.exit(1)


def _with_hint(exc: click.NoSuchOption) -> click.NoSuchOption:
    hint = OPTION_HINTS.get(exc.option_name)
    if hint is not None:
        exc.message = f"No such option: {exc.option_name}; aimetcli calls it {hint}"
        exc.possibilities = None
    return exc


def _quiet_broken_pipe(ctx: click.Context) -> None:
    """The reader of standard output went away (``| head``): stop quietly, as Unix tools do.

    Python's recommended pattern: point the stdout descriptor at /dev/null so the
    interpreter's final flush cannot fail again, then exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real descriptor (e.g. under a test runner)
        pass
    ctx.exit(BROKEN_PIPE_EXIT)


def _debug(ctx: click.Context) -> bool:
    out = ctx.find_object(Output)
    return bool(out and out.debug) or "--debug" in sys.argv


@click.group(cls=AimetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="aimetcli")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
@click.option("-v", "--verbose", is_flag=True, help="Print details: skipped nodes and why, every table row.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--debug", is_flag=True, hidden=True)
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, as_json: bool, debug: bool) -> None:
    """aimetcli: AIMET's post-training quantization for plain ONNX files.

    \b
    Typical flow (start with ptq; the other commands are its steps, one at a time):
      aimetcli ptq in.onnx -o out/ --data calib.npz --eval eval.npz --labels label
      aimetcli fold-bn in.onnx folded.onnx
      aimetcli equalize folded.onnx -o eq.onnx
      aimetcli adaround eq.onnx -o ar.onnx --data calib.npz --param-bw 4
      aimetcli bias-correct eq.onnx -o bc.onnx --data calib.npz
      aimetcli quantsim bc.onnx -o sim.onnx --data calib.npz
      aimetcli evaluate in.onnx sim.onnx --data eval.npz --labels label
      aimetcli export sim.onnx -o deploy/
      aimetcli ranges in.onnx
      aimetcli analyze in.onnx -o analysis/ --data calib.npz --param-bw 4
    Every command reads '-' as stdin; the model-writing ones write '-o -' to stdout.
    """
    ctx.obj = Output(quiet=quiet, verbose=verbose, json=as_json, debug=debug)
