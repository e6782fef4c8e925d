"""ptq: AIMET's recommended post-training flow in one command."""

from __future__ import annotations

import dataclasses

import click
from rich.table import Table

from aimetcli.commands._options import (
    AmpArgs, DataArgs, Output, QuantArgs, amp_options, common_options, data_options, encoding_version_option, input_argument,
    quant_options, simplify_option,
)
from aimetcli.commands._shared import load_input, open_dataset, preflight
from aimetcli.commands.bias import METHOD_HELP, METHODS
from aimetcli.commands.export import render_export
from aimetcli.errors import AimetCliError, ErrorKind


@click.command("ptq")
@input_argument
@click.option("-o", "--output", "output", required=True, help="Output directory (created if missing).")
@click.option("--data", "data", required=True, help="Calibration data: .npy, .npz, image folder or random:N.")
@click.option("--eval", "eval_data", default=None, help="Evaluation data (default: the calibration data).")
@click.option("--labels", "labels_key", default=None, help="Labels key in the evaluation .npz (top-1 per stage).")
@click.option("--report", "report_path", default=None,
              help="Also write a self-contained HTML report (stage table, weight ranges, per-layer error).")
@click.option("--equalize/--no-equalize", "equalize", default=None,
              help="Try cross-layer equalization, kept only if it helps [default: with per-tensor weights].")
@click.option("--no-bias-correct", is_flag=True, help="Skip bias correction.")
@click.option("--adaround/--no-adaround", "adaround", default=None,
              help="Learn each weight's rounding (AdaRound) after equalization, kept only if it helps "
                   "[default: on below 8-bit weights].")
@click.option("--bias-correct-method", type=click.Choice(METHODS), default="hybrid", show_default=True,
              help=METHOD_HELP)
@encoding_version_option
@simplify_option
@amp_options
@data_options
@quant_options(auto_scheme=True)
@common_options
def ptq(out: Output, model_in: str, output: str, data: str, eval_data: str | None, labels_key: str | None,
        report_path: str | None, equalize: bool | None, no_bias_correct: bool, adaround: bool | None,
        bias_correct_method: str, encoding_version: str, simplify: bool, quant: QuantArgs, sampling: DataArgs,
        amp: AmpArgs) -> None:
    """Fold BN, choose the quantization, equalize, adaround, bias-correct, calibrate and export.

    Per-channel weights (unless --per-channel/--per-tensor or the --config
    decides), the other range scheme (--quant-scheme auto), equalization
    (with per-tensor weights unless --equalize/--no-equalize),
    AdaRound (below 8-bit weights unless --adaround/--no-adaround) and bias
    correction are each kept only where they bring the output closer to FP32 on
    the calibration samples by more than a margin (per-channel weights unless
    they lose by more than it: a tie goes to the finer grid); AdaRound and bias correction
    are fitted on the first three quarters and judged on the last, held out of them. The chosen
    model is exported. The table says what each number is on; --eval data only score.
    The output directory gets sim.onnx, what export writes, and report.json with
    ptq's decisions.

    \b
    With --max-drop (top-1 points on the labelled --eval data) or --min-sqnr
    (output SQNR on the calibration data), per-layer bitwidths are searched as
    AIMET's AMP does after equalization: the cheapest configuration within the
    budget is used by the later stages and exported, and the Pareto curve is
    printed, in report.json and in pareto.png (with the 'plot' extra).

    \b
    Examples:
      aimetcli ptq model.onnx -o out/ --data calib.npz --eval eval.npz --labels label
      aimetcli ptq model.onnx -o out/ --data calib.npz --eval eval.npz --labels label --param-bw 4 --max-drop 0.5
      aimetcli ptq model.onnx -o out/ --data calib.npz --per-channel --no-bias-correct
    """
    if labels_key and not eval_data and not data.endswith(".npz"):
        raise AimetCliError("--labels needs an .npz with labels (give --eval)", ErrorKind.USAGE)
    amp.check()
    preflight(out, model_in, output=output, output_is_dir=True, encoding_version=encoding_version,
              bitwidths=quant.bitwidths(), config=quant.config_path,
              data=[("--data", data), ("--eval", eval_data)])
    from aimetcli import api

    if report_path is not None:
        from aimetcli.report_html import check_report_path

        check_report_path(report_path, output)
    options = quant.options()
    budget = amp.options()
    if budget is not None:
        from aimetcli.ptq_amp import check_amp

        check_amp(budget, options, labels_key is not None)
    schemes = api.scheme_candidates(options) if quant.auto_scheme else (options.scheme,)
    model = load_input(out, model_in, simplify=simplify, float32=True)
    calib = open_dataset(model, data, sampling, out=out)
    evaluation = open_dataset(model, eval_data, dataclasses.replace(sampling, num_samples=None),
                              labels_key=labels_key, out=out, scored=True) if eval_data else None
    if evaluation is None and labels_key:
        evaluation = open_dataset(model, data, sampling, labels_key=labels_key, out=out, scored=True)
    ranges_before = api.weight_ranges(model) if report_path is not None else None
    with StageProgress(out) as progress:
        summary = api.ptq(model, calib, evaluation, options, sampling.run(log=out.info), outdir=output,
                          equalize_model=equalize, correct_bias=not no_bias_correct, method=bias_correct_method,
                          encoding_version=encoding_version, schemes=schemes, adaround=adaround,
                          on_stage=progress.stage,
                          on_start=progress.start, measure_layers=report_path is not None, amp=budget)
    for w in summary.warnings:
        out.warn(w)
    table = stage_table(summary)
    out.info(table)
    for tried in summary.schemes_tried:
        out.detail(f"{tried['scheme']} {'per-channel' if tried['per_channel'] else 'per-tensor'}: output SQNR "
                   f"{_db(tried['calib_sqnr_db'])} against FP32 on the calibration samples")
    if summary.mixed_precision is not None:
        out.info(pareto_table(summary.mixed_precision))
        _pareto_plot(out, summary, output)
    render_export(out, summary.export)
    if report_path is not None:
        from aimetcli.report_html import write_report

        write_report(report_path, summary, table, ranges_before, api.weight_ranges(summary.model))
        summary.files.append(report_path)
        out.info(f"Wrote {report_path}")
    out.info(f"Also wrote {output}/sim.onnx (the quantsim model, for evaluate or export).")
    out.info(summary.deploy)
    out.emit_json({"command": "ptq", "input": model_in, "output": output, **summary.to_json()})


def pareto_table(result) -> Table:
    """The Pareto curve of a mixed-precision search (aimetcli/amp/report.py's rows)."""
    from aimetcli.amp.report import pareto_rows

    headers, rows, caption = pareto_rows(result)
    table = Table(title=f"Mixed precision: {result.budget}", title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i in (1, 2) else "right", no_wrap=i != 1)
    for row in rows:
        table.add_row(*row)
    table.caption, table.caption_justify = caption, "left"
    return table


def _pareto_plot(out: Output, summary, output: str) -> None:
    """pareto.png in the output directory, or a note when matplotlib is missing."""
    import os

    from aimetcli.amp.report import plot_pareto

    path = os.path.join(output, "pareto.png")
    if plot_pareto(path, summary.mixed_precision):
        summary.files.append("pareto.png")
        out.info(f"Wrote {path} (the Pareto curve)")
    else:
        out.info("Note: pareto.png not written: plotting needs matplotlib (pip install 'aimetcli[plot]')")


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} dB"


def _cell(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else f"{value:{fmt}}"


def stage_table(summary) -> Table:
    """The stage table, one line a row at 80 columns (the notes follow as its caption); the
    header and caption say what each number is on."""
    opts = summary.options
    cal = summary.calibration
    held = cal.get("held_out_samples") or 0
    on_eval = any(s.sqnr_db is not None for s in summary.stages)
    data = summary.stages[0].data if summary.stages else "evaluation"
    show_top1 = any(s.top1 is not None for s in summary.stages)
    granularity = "per-channel" if opts.get("per_channel") else "per-tensor"
    table = Table(title=f"PTQ W{opts['param_bw']}A{opts['act_bw']} {granularity} {opts['scheme']} "
                        f"for {opts.get('target', 'generic')} (exported)",
                  title_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("kept", justify="center", no_wrap=True)
    table.add_column("calib", justify="right", no_wrap=True)
    if on_eval:
        table.add_column("eval", justify="right", no_wrap=True)
    if show_top1:
        table.add_column("top-1", justify="right", no_wrap=True)
    table.add_column("gain", justify="right", no_wrap=True)
    table.add_column("s", justify="right", no_wrap=True)
    for s in summary.stages:
        cells = [s.name, {True: "yes", False: "no", None: ""}[s.kept], _cell(s.calib_sqnr_db)]
        if on_eval:
            cells.append(_cell(s.sqnr_db))
        if show_top1:
            cells.append(_cell(s.top1, ".2f"))
        gain = "" if s.gain_db is None else f"{s.gain_db:+.2f} veto" if s.veto else \
            f"{s.gain_db:+.2f}{'>' if s.kept else '<='}{s.margin_db:.2f}"
        table.add_row(*cells, gain, f"{s.seconds:.1f}")
    judged = (f"but bias correction, fitted on the first {cal.get('fit_samples')} and judged on the last {held}, "
              "scored on all of them only when kept" if held else "bias correction too: too few to hold some out")
    scored = "its float emulation" if opts.get("target") == "htp" else "its model_qdq.onnx in onnxruntime"
    caption = [f"calib: output SQNR (dB) against FP32 of each sim as deployed ({scored}) on the "
               f"{cal.get('samples')} calibration samples, which "
               f"judge every choice ({judged}): a change is kept when its gain (dB) exceeds the margin "
               f"(>= {cal.get('margin_db', 0):.1f} dB, more where the samples disagree); per-channel weights unless they "
               "lose by more than it (a tie goes to the finer grid)."]
    if any(s.veto for s in summary.stages):
        caption.append("veto: a gain not kept because the Softmax's argmax agrees less often with FP32's "
                       "(class-balanced; the row's note has the numbers).")
    if on_eval:
        caption.append(f"eval: the same SQNR on the {data} data, which decide nothing.")
    if show_top1:
        caption.append(f"top-1 (%): on the {data if on_eval or data == 'evaluation' else 'calibration'} "
                       "data" + (" (no --eval given)" if data == "calibration" else "") + ".")
    caption.append("s: the stage's own time in seconds (its rewrite, calibration, correction and scoring runs).")
    notes = [f"{s.name}: {s.note}" for s in summary.stages if s.note and s.name != "fp32"]
    table.caption = "\n".join([" ".join(caption), *notes])
    table.caption_justify = "left"
    return table


class StageProgress:
    """ptq's progress on stderr: on a terminal, a spinner with the running step and its elapsed time
    (never still, even inside one long onnxruntime run) and each finished row printed above it;
    elsewhere one plain line per finished row."""

    def __init__(self, out: Output):
        self.out = out
        self._progress = None
        self._task = None

    def __enter__(self) -> "StageProgress":
        if self.out.show_progress:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("ptq: {task.description}"), TimeElapsedColumn(),
                                      console=self.out.console, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("starting", total=None)
        return self

    def start(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def stage(self, stage) -> None:
        parts = []
        if stage.calib_sqnr_db is not None:
            parts.append(f"SQNR {stage.calib_sqnr_db:.1f} dB (calibration)")
        if stage.sqnr_db is not None and not (stage.data == "calibration" and stage.calib_sqnr_db is not None):
            parts.append(f"{stage.sqnr_db:.1f} dB ({stage.data})")  # (--eval the --data file: said once)
        if stage.top1 is not None:
            parts.append(f"top-1 {stage.top1:.2f}% ({stage.data})")
        kept = {True: " (kept)", False: " (dropped)", None: ""}[stage.kept]
        line = f"[{stage.seconds:6.2f} s] {stage.name}{kept}: {', '.join(parts) or stage.note}"
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            self.out.info(line)

    def __exit__(self, *exc) -> bool:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


COMMANDS = [ptq]
