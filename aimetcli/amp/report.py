"""The Pareto curve of a mixed-precision search as table rows (terminal and HTML) and a plot."""

from __future__ import annotations

import io
from pathlib import Path

from aimetcli.model_io import write_bytes_atomic


def _f(value, fmt: str) -> str:
    return "-" if value is None else f"{value:{fmt}}"


def pareto_rows(result) -> tuple[list[str], list[list[str]], str]:
    """(headers, rows, caption) of ``result``'s Pareto curve (steps.amp.AmpResult): the points
    scored, with the all-highest start, the chosen point and the end of the walk always shown."""
    shown = [p for p in result.pareto if p.meets is not None or p.deployed is not None or p.chosen
             or p.step in (0, len(result.pareto) - 1)]
    checked = any(p.deployed is not None for p in result.pareto)
    unit = "top-1" if result.metric == "top1" else "SQNR dB"
    headers = ["step", "moved", "to", "bit-ops", "weights kB", "top-1", "SQNR dB", "budget"]
    headers[-1:-1] = [f"deployed {unit}"] if checked else []
    rows = []
    for p in shown:
        budget = {True: "met", False: "missed", None: "-"}[p.meets]
        if p.refined:  # tried alone after the walk: kept where met, else undone
            budget += ", kept" if p.meets else ", undone"
        budget += " <- chosen" if p.chosen else ""
        rows.append([str(p.step), p.group or "(start: every group at its highest)", p.candidate or "-",
                     f"{p.relative_bitops:.3f}", f"{p.weight_bytes / 1e3:.1f}", _f(p.top1, ".2f"), _f(p.sqnr_db, ".1f"),
                     *([_f(p.deployed, ".2f")] if checked else []), budget])
    final = ""
    if result.final_top1 is not None or result.final_sqnr_db is not None:
        final = (f" The chosen configuration as a plain sim (grids recalibrated): top-1 {_f(result.final_top1, '.2f')}, "
                 f"SQNR {_f(result.final_sqnr_db, '.1f')} dB.")
    caption = (f"Each step moves one group (a layer's weight and output, or an activation) to a cheaper candidate "
               f"({', '.join(result.candidates)}), least error per "
               f"{'activation moved below its widest bitwidth' if result.cost == 'activations' else 'bit-operation saved'}"
               f" first; after the walk "
               f"(kept / undone), the steps past its choice tried one at a time from it. bit-ops: "
               f"MACs x weight bits x input bits relative to all 8-bit (float 32 bits); weights kB at those bits. "
               f"Target {result.target:.2f}{'%' if result.metric == 'top1' else ' dB'}; {len(result.pareto)} steps, "
               f"{len(shown)} scored or shown; {result.runs} runs of the switchable sim (phase 1 on "
               f"{result.phase1_samples} samples)." + final
               + (" deployed: the budget's metric of model_qdq.onnx under onnxruntime's optimizations (its integer "
                  "kernels), where the pick was checked." if checked else "")
               + (f" {result.note}." if result.note else ""))
    return headers, rows, caption


def pareto_png(result) -> bytes | None:
    """The curve as a PNG (accuracy against relative bit-operations, and against weight size; when
    the search moves activations only, every point has one weight size, so against the share of
    activations above the base bitwidth instead), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scored = [p for p in result.pareto if p.meets is not None]
    key = "top1" if result.metric == "top1" else "sqnr_db"
    label = "top-1 (%)" if key == "top1" else "output SQNR (dB)"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    second = ("weight_bytes", "weight size (kB)", 1e-3, True)
    if len({p.weight_bytes for p in scored}) <= 1:
        second = ("wide_activation_share", "activations above the base bitwidth (%)", 100.0, False)
    for ax, (attr, xlabel, scale, log) in ((axes[0], ("relative_bitops", "bit-operations relative to all 8-bit",
                                                      1.0, True)), (axes[1], second)):
        along = [p for p in scored if not p.refined]
        ax.plot([getattr(p, attr) * scale for p in along], [getattr(p, key) for p in along], marker="o",
                markersize=4, color="tab:blue", label="points scored along the walk")
        after = [p for p in scored if p.refined]
        if after:
            ax.scatter([getattr(p, attr) * scale for p in after], [getattr(p, key) for p in after], s=10,
                       color="tab:orange", zorder=2, label="steps tried after the walk")
        met = [p for p in scored if p.meets]
        ax.scatter([getattr(p, attr) * scale for p in met], [getattr(p, key) for p in met], s=16, color="tab:green",
                   zorder=3, label="within the budget")
        chosen = next((p for p in result.pareto if p.chosen), None)
        if chosen is not None and getattr(chosen, key) is not None:
            ax.scatter([getattr(chosen, attr) * scale], [getattr(chosen, key)], s=90, facecolors="none",
                       edgecolors="tab:red", linewidths=2, zorder=4, label="chosen")
        ax.axhline(result.target, color="tab:red", linestyle="--", linewidth=1, label=f"target {result.target:.2f}")
        if log:
            ax.set_xscale("log")  # the float start is 16x all-8-bit: a linear axis squeezes the rest
            from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel + (" (log scale)" if log else ""), fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Mixed precision: {result.budget}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_pareto(path: str, result) -> bool:
    """Write :func:`pareto_png` to ``path``; False (nothing written) without matplotlib."""
    png = pareto_png(result)
    if png is None:
        return False
    write_bytes_atomic(Path(path), png)
    return True
