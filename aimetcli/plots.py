"""Per-channel weight range plots (AIMET's quantization visualization), matplotlib optional."""

from __future__ import annotations

import io
from pathlib import Path

from aimetcli.errors import AimetCliError, ErrorKind
from aimetcli.model_io import check_output_path, write_bytes_atomic

MAX_LAYERS = 16


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise AimetCliError(
            "plotting needs matplotlib; install it with: pip install 'aimetcli[plot]'", ErrorKind.USAGE
        ) from exc
    return plt


def _pick(rows, limit: int):
    """The layers with the widest spread, in model order."""
    chosen = sorted(range(len(rows)), key=lambda i: -rows[i].spread)[:limit]
    return sorted(chosen)


def _overview(ax, columns: list[tuple[str, list]]) -> None:
    """Every layer's spread (log scale), model order, one line per model state."""
    first = columns[0][1]
    for col, (title, rows) in enumerate(columns):
        spread = {r.layer: r.spread for r in rows}
        ax.plot(range(1, len(first) + 1), [spread.get(r.layer, float("nan")) for r in first], marker="o",
                markersize=3, label=title, color="tab:blue" if col == 0 else "tab:green")
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%gx"))
    ax.set_title(f"Spread of every one of the {len(first)} layers (max/min of per-channel max |w|)", fontsize=9)
    ax.set_xlabel("layer (model order)", fontsize=7)
    ax.set_ylabel("spread", fontsize=7)
    ax.tick_params(which="both", labelsize=6)
    ax.legend(fontsize=7)


def plot_ranges(path: str, columns: list[tuple[str, list]], limit: int | None = MAX_LAYERS) -> None:
    """An overview of every layer's spread, then one row per layer, one column per model state
    (e.g. before / after).

    The overview (top, full width) shows each layer's spread (max/min of its per-channel max |w|)
    in model order, one series per state, so every layer is seen at a glance even where the rows
    below show only some. Each row's panels show max |w| per output channel, as AIMET's
    visualize_model does. ``limit``: at most this many rows, the layers of widest spread (None:
    every layer).
    """
    if not (path.endswith(".png") or path.endswith(".html") or path.endswith(".svg")):
        raise AimetCliError(f"{path}: plot file must end in .png, .svg or .html", ErrorKind.USAGE)
    check_output_path(path)
    plt = _pyplot()
    first = columns[0][1]
    idx = _pick(first, len(first) if limit is None else limit)
    by_name = [{r.layer: r for r in rows} for _, rows in columns]
    nrows, ncols = max(1, len(idx)), len(columns)
    fig = plt.figure(figsize=(6 * ncols, 1.9 * (nrows + 1)))
    grid = fig.add_gridspec(nrows + 1, ncols)
    _overview(fig.add_subplot(grid[0, :]), columns)
    axes = [[fig.add_subplot(grid[row + 1, col]) for col in range(ncols)] for row in range(nrows)]
    for row, i in enumerate(idx):
        name = first[i].layer
        ymax = max(max(d[name].ranges) if name in d and d[name].ranges else 0 for d in by_name) or 1.0
        for col, (title, _rows) in enumerate(columns):
            ax = axes[row][col]
            r = by_name[col].get(name)
            if r is None:
                ax.set_axis_off()
                continue
            ax.bar(range(len(r.ranges)), r.ranges, width=1.0, color="tab:blue" if col == 0 else "tab:green")
            ax.set_ylim(0, ymax * 1.05)
            ax.set_title(f"{title}: {name} ({r.op}, spread {r.spread:.1f}x)", fontsize=8)
            ax.tick_params(labelsize=6)
            if row == nrows - 1:
                ax.set_xlabel("output channel", fontsize=7)
            if col == 0:
                ax.set_ylabel("max |w|", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fmt = "svg" if path.endswith((".svg", ".html")) else "png"
    fig.savefig(buf, format=fmt, dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    if path.endswith(".html"):
        data = (b"<!doctype html><meta charset='utf-8'><title>aimetcli weight ranges</title>\n"
                b"<h1>Per-channel weight ranges</h1>\n" + data + b"\n")
    write_bytes_atomic(Path(path), data)
