"""ptq's HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched).

It holds the stage table (the same rows and caption as the terminal's), each layer's
per-output-channel weight ranges before ptq (the input model) and after (the FP32 model the
exported sim quantizes), and each layer's output error in the final sim against that FP32 model
(:func:`aimetcli.ptq_flow.layer_errors`), so that a user sees where the error comes from.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from aimetcli.errors import AimetCliError, ErrorKind

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.no td{color:#999}
caption{caption-side:bottom;text-align:left;font-size:12px;color:#555;padding-top:4px}
h2{margin-top:1.6em}
code{background:#f3f3f3;padding:1px 4px}
svg{vertical-align:middle}
"""


def check_report_path(path: str, outdir: str | None = None) -> None:
    """Before any work: the report must be an .html file that can be written. Inside ``outdir``
    (ptq's output directory, checked already and created later) its directory need not exist yet."""
    from aimetcli import paths

    if not path.lower().endswith((".html", ".htm")):
        raise AimetCliError(f"--report {path}: the report is HTML; give a path ending in .html", ErrorKind.USAGE)
    if outdir is not None and Path(path).parent.resolve() == Path(outdir).resolve() and not Path(outdir).exists():
        return
    paths.check_output_path(path)


def _esc(value) -> str:
    return html.escape(str(value))


def _num(value, fmt: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else ("inf" if value > 0 else "-inf")
    return f"{value:{fmt}}"


def _stage_rows(summary) -> str:
    on_eval = any(s.sqnr_db is not None for s in summary.stages)
    head = ["stage", "kept", "calib dB"] + (["eval dB"] if on_eval else []) + ["top-1 %", "time s", "note"]
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for s in summary.stages:
        cells = [f"<td>{_esc(s.name)}</td>", f"<td>{ {True: 'yes', False: 'no', None: ''}[s.kept]}</td>",
                 f"<td class=n>{_num(s.calib_sqnr_db)}</td>"]
        if on_eval:
            cells.append(f"<td class=n>{_num(s.sqnr_db)}</td>")
        cells += [f"<td class=n>{_num(s.top1, '.2f')}</td>", f"<td class=n>{s.seconds:.1f}</td>",
                  f"<td>{_esc(s.note)}</td>"]
        rows.append(f"<tr class={'no' if s.kept is False else 'row'}>" + "".join(cells) + "</tr>")
    return "\n".join(rows)


MAX_BARS = 96


def _bars(values: list[float], top: float, color: str, width: int = 240, height: int = 28) -> str:
    """Inline SVG: one bar per channel scaled to ``top`` (over MAX_BARS channels: one bar per group
    of neighbouring channels, their max, so that the file stays small)."""
    if not values:
        return ""
    if len(values) > MAX_BARS:
        step = -(-len(values) // MAX_BARS)
        values = [max(values[i:i + step]) for i in range(0, len(values), step)]
    w = width / len(values)
    bars = "".join(f'<rect x="{i * w:.2f}" y="{height - height * v / top:.2f}" width="{max(w, 0.5):.2f}" '
                   f'height="{height * v / top:.2f}"/>' for i, v in enumerate(values) if v > 0)
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" fill="{color}" '
            f'role="img">{bars}</svg>')


def _ranges_rows(before: list, after: list) -> str:
    after_by = {r.layer: r for r in after}
    rows = ["<tr><th>layer</th><th>op</th><th>ch</th><th>spread before</th><th>spread after</th>"
            "<th>max |w| per channel: before (blue), after (green)</th></tr>"]
    for b in before:
        a = after_by.get(b.layer)
        top = max([*b.ranges, *(a.ranges if a else [])] or [1.0]) or 1.0
        rows.append(f"<tr><td>{_esc(b.layer)}</td><td>{_esc(b.op)}</td><td class=n>{b.channels}</td>"
                    f"<td class=n>{_num(b.spread)}</td><td class=n>{_num(a.spread) if a else '-'}</td>"
                    f"<td>{_bars(b.ranges, top, '#1f77b4')} {_bars(a.ranges, top, '#2ca02c') if a else ''}</td></tr>")
    return "\n".join(rows)


def _error_chart(errors: list[dict], width: int = 1000, height: int = 160) -> str:
    """Inline SVG line of each layer's SQNR (dB), in model order."""
    vals = [e["sqnr_db"] for e in errors if math.isfinite(e["sqnr_db"])]
    if len(vals) < 2:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    step = width / max(len(errors) - 1, 1)
    pts = [f"{i * step:.1f},{height - 10 - (height - 20) * (e['sqnr_db'] - lo) / span:.1f}"
           for i, e in enumerate(errors) if math.isfinite(e["sqnr_db"])]
    return (f'<svg width="{width}" height="{height + 16}" role="img"><polyline fill="none" stroke="#d62728" '
            f'stroke-width="1.5" points="{" ".join(pts)}"/><text x="0" y="{height + 14}" font-size="11">'
            f'layer 1 .. {len(errors)}: SQNR from {lo:.1f} to {hi:.1f} dB</text></svg>')


def _error_rows(errors: list[dict]) -> str:
    rows = ["<tr><th>#</th><th>layer</th><th>op</th><th>SQNR dB</th><th>change</th></tr>"]
    previous = None
    for i, e in enumerate(errors, 1):
        change = "" if previous is None or not math.isfinite(previous) or not math.isfinite(e["sqnr_db"]) \
            else f"{e['sqnr_db'] - previous:+.1f}"
        rows.append(f"<tr><td class=n>{i}</td><td>{_esc(e['layer'])}</td><td>{_esc(e['op'])}</td>"
                    f"<td class=n>{_num(e['sqnr_db'])}</td><td class=n>{change}</td></tr>")
        previous = e["sqnr_db"]
    return "\n".join(rows)


def _mixed_precision(summary) -> str:
    """The Pareto curve of ptq's mixed-precision search (aimetcli/amp/report.py's rows and plot,
    the PNG inline), or nothing without a budget."""
    result = getattr(summary, "mixed_precision", None)
    if result is None:
        return ""
    import base64

    from aimetcli.amp.report import pareto_png, pareto_rows

    headers, rows, caption = pareto_rows(result)
    body = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr>\n" + "\n".join(
        "<tr>" + "".join(f"<td{'' if i in (1, 2, 7) else ' class=n'}>{_esc(c)}</td>" for i, c in enumerate(row))
        + "</tr>" for row in rows)
    png = pareto_png(result)
    plot = (f'<p><img alt="Pareto curve" src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>'
            if png is not None else "<p>(the plot needs matplotlib: pip install 'aimetcli[plot]')</p>")
    return (f"<h2>Mixed precision: {_esc(result.budget)}</h2>\n<p>Chosen: {_esc(result.counts())}; "
            f"{result.relative_bitops:.3f}x the bit-operations of all-8-bit, {result.weight_bytes / 1e3:.1f} kB of "
            f"weights. Rules applied: <code>{_esc(' '.join(result.rules) or '-')}</code></p>\n{plot}\n"
            f"<table>{body}<caption>{_esc(caption)}</caption></table>")


def render(summary, caption: str, ranges_before: list, ranges_after: list) -> str:
    """The report's text."""
    samples = min(summary.calibration.get("held_out_samples") or summary.calibration.get("samples", 0), 8)
    worst = sorted((e for e in summary.layer_errors), key=lambda e: e["sqnr_db"])[:3]
    worst_text = ", ".join(f"{_esc(e['layer'])} ({_num(e['sqnr_db'])} dB)" for e in worst)
    decisions = "".join(f"<li><b>{_esc(d.choice)}</b>: {'kept' if d.kept else 'not kept' if d.kept is False else '-'}"
                        f" ({_esc(d.reason)})</li>" for d in summary.decisions)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aimetcli ptq report</title><style>{CSS}</style></head>
<body>
<h1>aimetcli ptq report</h1>
<p><code>{_esc(summary.deploy)}</code></p>
<h2>Stages</h2>
<table>{_stage_rows(summary)}<caption>{_esc(caption)}</caption></table>
<ul>{decisions}</ul>
{_mixed_precision(summary)}
<h2>Per-layer error of the final model</h2>
<p>SQNR of each layer's output in the exported sim against the same tensor of the FP32 model it quantizes,
on {samples} held-out calibration samples; where it drops, that layer adds error. Lowest: {worst_text or '-'}.</p>
{_error_chart(summary.layer_errors)}
<table>{_error_rows(summary.layer_errors)}</table>
<h2>Weight ranges before and after</h2>
<p>Per output channel, max |w| of each layer in the input model (before) and in the FP32 model that was
quantized (after fold-bn, and equalization or bias correction where kept); spread = max / min over channels.</p>
<table>{_ranges_rows(ranges_before, ranges_after)}</table>
</body></html>
"""


def write_report(path: str, summary, table, ranges_before: list, ranges_after: list) -> None:
    """Write the report atomically; ``table`` is the terminal's rich table (its caption is reused)."""
    from aimetcli import model_io

    caption = str(table.caption or "").split("\n")[0]  # the rest are the notes, a column here
    text = render(summary, caption, ranges_before, ranges_after)
    model_io.write_text_atomic(Path(path), text)
