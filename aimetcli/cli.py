"""The ``aimetcli`` command group: shared options, output channels and error handling.

Commands (in aimetcli/commands/) are thin: parse options, make one library call
(aimetcli.api), render the result. Human output goes to stderr through rich, so
stdout stays free for ``-o -`` model bytes or the ``--json`` summary.

Exit codes: 0 success, 1 failure, 2 usage error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import dataclass

import click
from rich.console import Console

from aimetcli import __version__
from aimetcli.errors import AimetCliError, ErrorKind


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
            click.echo(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False, default=str))


def _finite(obj):
    """JSON has no inf/nan: such numbers (e.g. the SQNR of identical outputs) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _merge_flag(ctx: click.Context, name: str, value: bool) -> bool:
    parent = ctx.find_object(Output)
    return bool(value or (parent is not None and getattr(parent, name)))


def common_options(func):
    """-q/-v/--json/--debug, accepted both before and after the command name."""

    @click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
    @click.option("-v", "--verbose", is_flag=True, help="Say why each candidate node was skipped.")
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


class AimetGroup(click.Group):
    """Turns library errors into one line and an exit code; Ctrl-C into 130."""

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
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except MemoryError:
            click.echo("Error: out of memory; use a smaller --batch-size or --num-samples", err=True)
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


def _debug(ctx: click.Context) -> bool:
    out = ctx.find_object(Output)
    return bool(out and out.debug) or "--debug" in sys.argv


@click.group(cls=AimetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="aimetcli")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
@click.option("-v", "--verbose", is_flag=True, help="Say why each candidate node was skipped.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--debug", is_flag=True, hidden=True)
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, as_json: bool, debug: bool) -> None:
    """aimetcli: AIMET's post-training quantization for plain ONNX files.

    \b
    Typical flow:
      aimetcli fold-bn in.onnx -o folded.onnx
      aimetcli equalize folded.onnx -o eq.onnx
      aimetcli quantsim eq.onnx -o sim.onnx --data calib.npz
    Every command reads '-' as stdin and writes '-o -' to stdout.
    """
    ctx.obj = Output(quiet=quiet, verbose=verbose, json=as_json, debug=debug)


def require_distinct_stdout(out: Output, output: str) -> None:
    if out.json and output == "-":
        raise AimetCliError("--json and -o - both write to stdout; write the model to a file", ErrorKind.USAGE)


def _register() -> None:
    from aimetcli.commands import register

    register(main)


_register()
