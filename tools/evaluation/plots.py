"""Evaluation plots as PNG: metrics per frame (a line per method and video) and the mean per method (bars).

matplotlib Figure objects on the Agg canvas, no pyplot state, so plotting is safe in any thread or process.
"""
import math

import numpy as np

from tools.evaluation.tables import DECIMALS, METRICS, TITLES, fmt


def _grid(n, per_row=3):
    """(rows, cols) for n panels, at most per_row panels per row."""
    cols = min(n, per_row)
    return -(-n // cols), cols


def plot_per_frame(path, frames, available, max_legend=12, width=6, height=4):
    """PNG (path or binary stream): one panel per metric against the frame index, a line per (method, video);
    at most 3 panels per row. frames: per-frame rows (tables.py; PSNR inf is not drawn); available: the metric
    names to draw; more than max_legend lines get one legend entry per method; width, height: inches a panel."""
    keys = [k for k in METRICS if k in available]
    series = {}
    for r in frames:
        series.setdefault((r['method'], r['video']), []).append(r)
    methods = list(dict.fromkeys(m for m, _ in series))
    colors = {m: f'C{i % 10}' for i, m in enumerate(methods)}
    per_line = len(series) <= max_legend
    one_video = len({name for _, name in series}) == 1
    n_rows, cols = _grid(len(keys))
    from matplotlib.figure import Figure             # matplotlib loads on the first plot (0.7 s), not with recon
    from matplotlib.lines import Line2D
    fig = Figure(figsize=(width * cols, height * n_rows), layout='constrained')
    for i, k in enumerate(keys):
        ax = fig.add_subplot(n_rows, cols, i + 1)
        for j, ((m, name), rows) in enumerate(series.items()):
            x = [r['frame'] for r in rows if r[k] is not None]
            y = [r[k] if math.isfinite(r[k]) else np.nan for r in rows if r[k] is not None]
            color = colors[m] if one_video or not per_line else f'C{j % 10}'
            ax.plot(x, y, color=color, lw=1.2 if per_line else 0.6, alpha=1 if per_line else 0.5,
                    label=(m if one_video else f'{m} · {name}') if per_line else None)
        if k == 'psnr' and any(r['psnr'] is not None and math.isinf(r['psnr']) for r in frames):
            ax.set_title(TITLES[k] + ' (identical frames: inf, not drawn)', fontsize=9)
        else:
            ax.set_title(TITLES[k])
        ax.set_xlabel('frame')
        ax.grid(alpha=0.3)
    if per_line:
        fig.axes[0].legend(fontsize=7)
    else:
        fig.axes[0].legend([Line2D([], [], color=colors[m]) for m in methods], methods, fontsize=8)
    fig.savefig(path, dpi=100, format='png')


def plot_bars(path, summary, available):
    """PNG (path or binary stream) bar chart of each available metric's mean per method; summary:
    {method: {metric: value or None}} (tables.summarize), a missing or infinite value drawn as 0, labelled."""
    keys = [k for k in METRICS if k in available]
    methods = list(summary)
    rows, cols = _grid(len(keys))
    from matplotlib.figure import Figure
    fig = Figure(figsize=(3.2 * cols, 3.6 * rows), layout='constrained')
    for i, k in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        vals = [summary[m][k] for m in methods]
        shown = [v if v is not None and math.isfinite(v) else 0 for v in vals]
        bars = ax.bar(methods, shown, color=[f'C{j % 10}' for j in range(len(methods))])
        ax.bar_label(bars, labels=[fmt(v, DECIMALS[k]) or 'n/a' for v in vals], fontsize=8)
        ax.set_title(TITLES[k])
        ax.tick_params(axis='x', labelrotation=20)
        ax.margins(y=0.15)
    fig.savefig(path, dpi=100, format='png')
