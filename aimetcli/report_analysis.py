"""analyze's HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched).

Top to bottom: what was measured, the check of the ranking, the quantizers whose float tensor
recovers the most (a bar each), every quantizer, and each layer's output error in the full sim
against FP32 (where the error enters and how it grows).
"""

from __future__ import annotations

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
<style>{CSS}</style></head>
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
