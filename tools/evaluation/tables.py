"""Evaluation tables, formatting and plots: what tools/eval.py writes and tools/report.py reads.

Rows are plain dicts. A per-frame row: {method, video, frame, <metric>: float | None}; a per-video row adds
frames, height, width, psnr_inf_frames, ref, rec. Metric values are floats (PSNR may be inf) or None when
the metric was not computed (LPIPS without weights, VMAF without --vmaf, flicker/tOF on frame 0).
"""
import csv
import io
import json
import math

import numpy as np

from tools.evaluation import metrics
from tools.files import write_text_atomic

METRICS = ('psnr', 'ssim', 'lpips', 'flicker', 'tof', 'vmaf')
TITLES = {'psnr': 'PSNR (dB) ↑', 'ssim': 'SSIM ↑', 'lpips': 'LPIPS ↓', 'flicker': 'flicker ↓', 'tof': 'tOF ↓',
          'vmaf': 'VMAF ↑'}
DECIMALS = {'psnr': 2, 'ssim': 4, 'lpips': 4, 'flicker': 5, 'tof': 4, 'vmaf': 2}
HIGHER_IS_BETTER = ('psnr', 'ssim', 'vmaf')
SUMMARY_FORMAT = 'cascadev-eval-summary'
SUMMARY_VERSION = 1

PER_FRAME_NOTE = ("# Per-frame metrics on uint8 frames; psnr, ssim and flicker in float64 on the [0, 1] scale. "
                  "psnr: 10*log10(1/MSE) in dB, 'inf' for identical frames. ssim: Gaussian window 11x11 sigma 1.5, "
                  "K1 0.01, K2 0.03, mean of the R, G, B channel SSIMs. lpips: AlexNet LPIPS v0.1, empty if "
                  "unavailable. flicker: mean |(rec[t] - rec[t-1]) - (ref[t] - ref[t-1])|, empty for frame 0. "
                  "tof: mean over pixels of |F_rec - F_ref|_1, F = DIS optical flow from frame t-1 to t in pixels, "
                  "empty for frame 0. vmaf: libvmaf vmaf_v0.6.1 score 0..100, empty without --vmaf.")
PER_VIDEO_NOTE = ("# Per-video values are means over the frames. psnr = mean of the per-frame PSNRs (dB) over the "
                  "frames with finite PSNR; psnr_inf_frames counts identical frames left out of that mean; 'inf' "
                  "if every frame is identical. flicker and tof are means over the frames-1 consecutive pairs.")
VIDEO_COLUMNS = ('method', 'video', 'frames', 'height', 'width', 'psnr', 'psnr_inf_frames', 'ssim', 'lpips',
                 'flicker', 'tof', 'vmaf', 'ref', 'rec')


class EvalError(ValueError):
    """Bad evaluation input (paths, flags, files); the message is one line naming the path, the rule and the fix."""


# ---- values and means --------------------------------------------------------------------------------------

def fmt(value, decimals=6):
    """A metric value for CSV/Markdown: 'inf', '' for missing, else fixed decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ''
    if math.isinf(value):
        return 'inf' if value > 0 else '-inf'
    return f'{value:.{decimals}f}'


def parse_value(text):
    """A CSV cell -> float ('inf' -> inf), or None when empty."""
    return float(text) if text not in ('', None) else None


def mean(values):
    """Mean of the values that are neither None nor nan; None when none is left."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def summarize(videos):
    """Per-video rows -> {method: {videos, frames, <metric>...}}: means over videos (PSNR: metrics.mean_psnr)."""
    out = {}
    for v in videos:
        out.setdefault(v['method'], []).append(v)
    return {m: {'videos': len(rows), 'frames': sum(r['frames'] for r in rows),
                'psnr': metrics.mean_psnr([r['psnr'] for r in rows]),
                **{k: mean([r[k] for r in rows]) for k in METRICS if k != 'psnr'}}
            for m, rows in out.items()}


def available_metrics(videos):
    """The metrics that have a value for at least one video, in METRICS order."""
    return [k for k in METRICS if any(v.get(k) is not None for v in videos)]


# ---- CSV --------------------------------------------------------------------------------------------------

def read_table(path):
    """Rows of a per_frame/per_video CSV (comment lines skipped) as dicts of strings."""
    with open(path, newline='') as f:
        return list(csv.DictReader(line for line in f if not line.startswith('#')))


def csv_text(note, header, rows):
    """A CSV document: one '#' comment line, the header, the rows."""
    buf = io.StringIO()
    buf.write(note + '\n')
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


# ---- JSON (strict: no NaN/Infinity tokens) -----------------------------------------------------------------

def json_number(value):
    """A metric value for JSON: a float, or None for missing, nan and ±inf (PSNR inf is flagged 'identical')."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def json_row(row):
    """A summary or per-video row with JSON-safe numbers; 'identical' is true where PSNR is +inf."""
    out = {k: json_number(v) if k in METRICS else v for k, v in row.items()}
    out['identical'] = row['psnr'] is not None and row['psnr'] == math.inf
    return out


def metric_value(entry, key):
    """Read back a metric from a summary.json row: PSNR null with 'identical' true -> inf."""
    if key == 'psnr' and entry.get('psnr') is None and entry.get('identical'):
        return math.inf
    return entry.get(key)


def summary_json(summary, videos, setup, notes, extra=None):
    """The summary.json document (see the README's schema): strict JSON text, numbers as numbers."""
    doc = {'format': SUMMARY_FORMAT, 'version': SUMMARY_VERSION, 'setup': setup, 'notes': list(notes),
           'metrics': list(METRICS), **(extra or {}),
           'methods': {m: json_row(s) for m, s in summary.items()},
           'videos': [json_row({c: v[c] for c in VIDEO_COLUMNS}) for v in videos]}
    return json.dumps(doc, indent=1, allow_nan=False) + '\n'


def load_summary(path):
    """Parse summary.json strictly (NaN/Infinity tokens rejected); raises EvalError naming the file."""
    def reject(token):
        raise ValueError(f'{token} is not valid JSON')
    try:
        return json.loads(open(path).read(), parse_constant=reject)
    except ValueError as e:
        raise EvalError(f'{path}: not valid JSON ({e}); rerun tools/eval.py to rewrite it') from None


# ---- Markdown ---------------------------------------------------------------------------------------------

def markdown_table(summary):
    """The per-method summary as a Markdown table."""
    lines = ['| method | videos | frames | ' + ' | '.join(TITLES[k] for k in METRICS) + ' |',
             '|---|---:|---:|' + '---:|' * len(METRICS)]
    for m, s in summary.items():
        vals = [fmt(s[k], DECIMALS[k]) or 'n/a' for k in METRICS]
        lines.append(f"| {m} | {s['videos']} | {s['frames']} | " + ' | '.join(vals) + ' |')
    return '\n'.join(lines)


def summary_markdown(summary, videos, setup, notes):
    """summary.md: setup line, method table, definitions, notes and a per-video table."""
    per_video = ['| video | method | frames | ' + ' | '.join(TITLES[k] for k in METRICS) + ' |',
                 '|---|---|---:|' + '---:|' * len(METRICS)]
    for v in sorted(videos, key=lambda v: (v['video'], v['method'])):
        per_video.append(f"| {v['video']} | {v['method']} | {v['frames']} | "
                         + ' | '.join(fmt(v[k], DECIMALS[k]) or 'n/a' for k in METRICS) + ' |')
    return '\n'.join([
        '# Evaluation summary', '', setup, '', markdown_table(summary), '',
        'Method values are means over videos of the per-video means over frames; per-video PSNR is the mean of '
        'the per-frame PSNRs (dB) of frames that differ (identical frames have PSNR inf). Metrics are computed '
        'on uint8 frames on the [0, 1] scale; flicker is the mean |Δrec − Δref| of consecutive-frame differences; '
        'tOF the mean L1 distance (pixels) between the DIS optical flows of consecutive reference and '
        'reconstructed frames; VMAF is libvmaf (vmaf_v0.6.1) on the same frames.',
        '', *[f'- {n}' for n in notes], '', '## Per video', '', *per_video, ''])


# ---- plots (matplotlib Figure objects: no pyplot state, Agg canvas) -------------------------------------

def _grid(n, per_row=3):
    """(rows, cols) for n panels, at most per_row panels per row."""
    cols = min(n, per_row)
    return -(-n // cols), cols


def plot_per_frame(path, frames, available, max_legend=12, width=6, height=4):
    """PNG (path or binary stream): one panel per metric against the frame index, a line per (method, video);
    at most 3 panels per row."""
    from matplotlib.figure import Figure
    keys = [k for k in METRICS if k in available]
    series = {}
    for r in frames:
        series.setdefault((r['method'], r['video']), []).append(r)
    methods = list(dict.fromkeys(m for m, _ in series))
    colors = {m: f'C{i % 10}' for i, m in enumerate(methods)}
    per_line = len(series) <= max_legend
    one_video = len({name for _, name in series}) == 1
    n_rows, cols = _grid(len(keys))
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
        from matplotlib.lines import Line2D
        fig.axes[0].legend([Line2D([], [], color=colors[m]) for m in methods], methods, fontsize=8)
    fig.savefig(path, dpi=100, format='png')


def plot_bars(path, summary, available):
    """PNG bar chart of each metric's mean per method."""
    from matplotlib.figure import Figure
    keys = [k for k in METRICS if k in available]
    methods = list(summary)
    rows, cols = _grid(len(keys))
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


# ---- the evaluation folder --------------------------------------------------------------------------------

def write_outputs(out_dir, frames, videos, summary, setup, notes, extra=None):
    """per_frame.csv, per_video.csv, summary.md, summary.json, per_frame.png (+ bars.png) -> {name: path}.

    out_dir: pathlib.Path. extra: more top-level summary.json keys (protocol, lpips, vmaf)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {'per_frame': out_dir / 'per_frame.csv', 'per_video': out_dir / 'per_video.csv',
             'summary': out_dir / 'summary.md', 'summary_json': out_dir / 'summary.json',
             'per_frame_plot': out_dir / 'per_frame.png'}
    write_text_atomic(files['per_frame'], csv_text(PER_FRAME_NOTE, ['method', 'video', 'frame', *METRICS], [
        [r['method'], r['video'], r['frame'], *(fmt(r[k]) for k in METRICS)] for r in frames]))
    write_text_atomic(files['per_video'], csv_text(PER_VIDEO_NOTE, VIDEO_COLUMNS, [
        [fmt(v[c]) if c in METRICS else v[c] for c in VIDEO_COLUMNS] for v in videos]))
    write_text_atomic(files['summary'], summary_markdown(summary, videos, setup, notes))
    write_text_atomic(files['summary_json'], summary_json(summary, videos, setup, notes, extra))
    available = available_metrics(videos)
    plot_per_frame(files['per_frame_plot'], frames, available)
    if len(summary) > 1:
        files['bars_plot'] = out_dir / 'bars.png'
        plot_bars(files['bars_plot'], summary, available)
    return files
