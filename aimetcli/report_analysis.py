"""analyze's HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched).

Top to bottom: what was measured, the check of the ranking, the quantizers whose float tensor
recovers the most (a bar each), the histograms of the worst ones' tensors with their grids
marked, the tensors whose grids clip the most, each layer's output error in the full sim against
FP32 (where the error enters and how it grows), and every quantizer.
"""

from __future__ import annotations

import math
from pathlib import Path

from aimetcli.report_html import CSS, _error_chart, _error_rows, _esc, _num


def _bars(rows: list[tuple[str, float]], width: int = 640, bar: int = 16) -> str:
    """Inline SVG: one horizontal bar per (label, dB >= 0), longest first as given."""
    if not rows:
        return ""
    top = max(max(v for _, v in rows), 1e-9)
    label_w = 330
    height = bar * len(rows) + 4
    parts = [f'<svg width="{label_w + width + 60}" height="{height}" role="img">']
    for i, (label, value) in enumerate(rows):
        y = i * bar
        w = max(0.0, value) / top * width
        parts.append(f'<text x="0" y="{y + 12}" font-size="11">{_esc(label[:52])}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar - 4}" fill="#1f77b4"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="11">{value:+.2f} dB</text>')
    parts.append("</svg>")
    return "".join(parts)


def _quantizer_rows(analysis, quantizers) -> str:
    rows = ["<tr><th>quantizer</th><th>kind</th><th>layer</th><th>op</th><th>only on dB</th>"
            "<th>all but dB</th><th>recovers dB</th></tr>"]
    for q in quantizers:
        rows.append(f"<tr><td>{_esc(q.tensor)}</td><td>{q.kind}</td><td>{_esc(q.node)}</td><td>{_esc(q.op)}</td>"
                    f"<td class=n>{_num(q.only_sqnr_db)}</td><td class=n>{_num(q.all_but_sqnr_db)}</td>"
                    f"<td class=n>{q.recovered_db(analysis.full_sqnr_db):+.2f}</td></tr>")
    return "\n".join(rows)


def _span(lo: float, hi: float) -> tuple[float, float]:
    pad = (hi - lo) * 0.04 or max(abs(lo), 1.0) * 0.04
    return lo - pad, hi + pad


def histogram_svg(r, recovered_db: float | None = None, width: int = 520, height: int = 160) -> str:
    """Inline SVG of a :class:`~aimetcli.tensor_ranges.TensorRange`: its histogram (log counts)
    over the data's range, the grid's range between two red lines, what lies beyond shaded."""
    left, right, top, bottom = 8, width - 8, 36, height - 34
    lo, hi = _span(min(r.data_min, r.grid_min), max(r.data_max, r.grid_max))

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (right - left)

    kind = f"{r.kind}, {r.bitwidth} bit" + (f", {r.channels} channels" if r.channels > 1 else "")
    note = f"grid [{r.grid_min:.4g}, {r.grid_max:.4g}], {100 * r.clipped_fraction:.3g}% clipped"
    if recovered_db is not None:
        note += f", float recovers {recovered_db:+.2f} dB"
    parts = [f'<svg width="{width}" height="{height}" role="img">',
             f'<text x="{left}" y="12" font-size="12" font-weight="bold">{_esc(r.tensor[:66])}</text>',
             f'<text x="{left}" y="26" font-size="11" fill="#555">{_esc(kind)}; {_esc(note)}</text>']
    g_lo, g_hi = x(r.grid_min), x(r.grid_max)
    for a, b in ((left, g_lo), (g_hi, right)):  # beyond the grid: clipped
        if b > a:
            parts.append(f'<rect x="{a:.1f}" y="{top}" width="{b - a:.1f}" height="{bottom - top}" fill="#fde0dd"/>')
    counts = r.histogram
    if counts:
        peak = math.log1p(max(counts)) or 1.0
        d_lo, d_hi = r.data_min, r.data_max if r.data_max > r.data_min else r.data_min + 1.0
        step = (d_hi - d_lo) / len(counts)
        for i, c in enumerate(counts):
            if c:
                x0, x1 = x(d_lo + i * step), x(d_lo + (i + 1) * step)
                h = math.log1p(c) / peak * (bottom - top)
                parts.append(f'<rect x="{x0:.1f}" y="{bottom - h:.1f}" width="{max(x1 - x0, 0.6):.1f}" '
                             f'height="{h:.1f}" fill="#1f77b4"/>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>')
    for v in (r.grid_min, r.grid_max):
        parts.append(f'<line x1="{x(v):.1f}" y1="{top}" x2="{x(v):.1f}" y2="{bottom}" class="grid-end" '
                     f'stroke="#d62728" stroke-width="1.5"/>')
    parts.append(f'<text x="{x(r.data_min):.1f}" y="{bottom + 13}" font-size="10" text-anchor="middle">'
                 f'{r.data_min:.4g}</text><text x="{x(r.data_max):.1f}" y="{bottom + 13}" font-size="10" '
                 f'text-anchor="middle">{r.data_max:.4g}</text>'
                 f'<text x="{(left + right) / 2:.0f}" y="{bottom + 27}" font-size="10" fill="#555" '
                 f'text-anchor="middle">values (data min and max below the axis); bar height: log count</text>')
    parts.append("</svg>")
    return "".join(parts)


def _range_rows(ranges) -> str:
    rows = ["<tr><th>tensor</th><th>kind</th><th>bits</th><th>grid min</th><th>grid max</th><th>data min</th>"
            "<th>data max</th><th>clipped %</th><th>range used</th></tr>"]
    for r in ranges:
        rows.append(f"<tr><td>{_esc(r.tensor)}</td><td>{r.kind}{' (%d ch)' % r.channels if r.channels > 1 else ''}"
                    f"</td><td class=n>{r.bitwidth}</td><td class=n>{r.grid_min:.4g}</td>"
                    f"<td class=n>{r.grid_max:.4g}</td><td class=n>{r.data_min:.4g}</td>"
                    f"<td class=n>{r.data_max:.4g}</td><td class=n>{100 * r.clipped_fraction:.3g}</td>"
                    f"<td class=n>{_num(r.range_used, '.2f')}</td></tr>")
    return "\n".join(rows)


def _ranges_section(analysis) -> str:
    if not analysis.ranges:
        return ""
    recovered = {q.tensor: q.recovered_db(analysis.full_sqnr_db) for q in analysis.quantizers}
    drawn = analysis.histogram_ranges()
    clipping = sorted(analysis.ranges, key=lambda r: (-r.clipped_fraction, r.range_used))[:RANGE_ROWS]
    plots = "\n".join(histogram_svg(r, recovered.get(r.tensor)) for r in drawn)
    heading = ("Tensors whose grids clip the most" if any(r.clipped for r in analysis.ranges) else
               "Tensors whose grids clip the most: none clips, so the grids the data uses least")
    return f"""<h2>Ranges of the worst quantizers' tensors</h2>
<p>Each quantized tensor's values over the calibration data (weights as stored, activations with the
weights quantized, as calibration saw them), the grid's range between the red lines; values in the
shaded parts are clipped (beyond the grid by more than half a step). A grid far wider than the
data spends its steps on values that never occur; one that clips much cuts outliers.</p>
<div>{plots}</div>
<h2>{heading}</h2>
<p>Clipped: the share of the calibration data's values the grid saturates. Range used: the data's
range over the grid's (below 1, unused steps). Every tensor is in report.json.</p>
<table>{_range_rows(clipping)}</table>"""


RANGE_ROWS = 20


def render(analysis, model_name: str, options: dict) -> str:
    worst = analysis.worst(20)
    check = ""
    if analysis.top_float_sqnr_db is not None:
        check = (f"<p>Check of the ranking: the worst {len(analysis.top)} kept float give "
                 f"<b>{_num(analysis.top_float_sqnr_db)} dB</b>; only they quantized give "
                 f"<b>{_num(analysis.top_only_sqnr_db)} dB</b> (every quantizer: {_num(analysis.full_sqnr_db)} dB).</p>")
    everything = sorted(analysis.quantizers, key=lambda q: q.only_sqnr_db)
    opts = ", ".join(f"{k} {v}" for k, v in options.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aimetcli analyze: {_esc(model_name)}</title>
<style>{CSS}td:first-child,td:nth-child(3){{overflow-wrap:anywhere}}</style></head>
<body>
<h1>Where the quantization error of {_esc(model_name)} comes from</h1>
<p>The sim ({_esc(opts)}) is {_num(analysis.full_sqnr_db)} dB from FP32 on output <code>{_esc(analysis.output)}</code>,
over {analysis.samples} samples. For each of its {len(analysis.quantizers)} quantizers: the SQNR with only that
quantizer on (the error it causes alone) and with every quantizer but it on (what keeping its tensor float
recovers). Keep the worst float with <code>--exclude</code>.</p>
{check}
<h2>What keeping one tensor float recovers</h2>
{_bars([(q.tensor, q.recovered_db(analysis.full_sqnr_db)) for q in worst])}
<table>{_quantizer_rows(analysis, worst)}</table>
{_ranges_section(analysis)}
<h2>Per-layer error in the full sim</h2>
<p>SQNR of each layer's output in the sim against the same tensor in FP32 (first {min(analysis.samples, 8)}
samples); where it drops, that layer adds error.</p>
{_error_chart(analysis.layers)}
<table>{_error_rows(analysis.layers)}</table>
<h2>Every quantizer, the most harmful alone first</h2>
<table>{_quantizer_rows(analysis, everything)}</table>
</body></html>
"""


def write_report(path: Path, analysis, model_name: str, options: dict) -> None:
    from aimetcli import model_io

    model_io.write_text_atomic(path, render(analysis, model_name, options))
