"""Evaluation tables: the values, CSV, JSON and Markdown that tools/eval.py writes and tools/report.py reads.

Rows are plain dicts. A per-frame row: {method, video, frame, <metric>: float | None}; a per-video row adds
frames, height, width, psnr_inf_frames, vbench_flicker (of the reconstruction alone), ref, rec. A summary row
(summarize) adds compression ('T×H×W, C ch' or None) and rfvd (None unless --fvd ran). Metric values are floats
(PSNR may be inf) or None when the metric was not computed (LPIPS without weights, VMAF without --vmaf,
flicker/tOF on frame 0).

Scripts read an evaluation folder back with `read_table(EVAL_DIR / 'per_video.csv')` (or per_frame.csv; cells
are strings, `parse_value` turns a metric cell into a float or None) and `load_summary(EVAL_DIR /
'summary.json')` (`metric_value(row, 'psnr')` gives inf back for identical clips).
"""
import csv
import io
import json
import math

from tools.evaluation import metrics
from tools.evaluation.errors import EvalError
from tools.evaluation.published import PUBLISHED_MARK

METRICS = ('psnr', 'ssim', 'lpips', 'flicker', 'tof', 'vmaf')      # per frame, per video and per method
VIDEO_METRICS = (*METRICS, 'vbench_flicker')                       # per video and per method
SUMMARY_METRICS = (*VIDEO_METRICS, 'rfvd')                         # per method: the summary table's columns
TITLES = {'psnr': 'PSNR (dB) ↑', 'ssim': 'SSIM ↑', 'lpips': 'LPIPS ↓', 'flicker': 'flicker ↓', 'tof': 'tOF ↓',
          'vmaf': 'VMAF ↑', 'vbench_flicker': 'VBench flicker', 'rfvd': 'rFVD ↓'}
DECIMALS = {'psnr': 2, 'ssim': 4, 'lpips': 4, 'flicker': 5, 'tof': 4, 'vmaf': 2, 'vbench_flicker': 5, 'rfvd': 2}
HIGHER_IS_BETTER = ('psnr', 'ssim', 'vmaf')
RANKED = ('psnr', 'ssim', 'lpips', 'flicker', 'tof', 'vmaf', 'rfvd')  # a best value (VBench flicker: nearest the
                                                                    # reference row's, not the highest)
NO_VALUE = '—'                                                      # a cell that has no meaning for its row
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
                  "if every frame is identical. flicker and tof are means over the frames-1 consecutive pairs. "
                  "vbench_flicker: VBench temporal flickering of the reconstruction alone, (255 - mean "
                  "|rec[t] - rec[t-1]| on 0..255) / 255, 1 = no change between frames.")
VIDEO_COLUMNS = ('method', 'video', 'frames', 'height', 'width', 'psnr', 'psnr_inf_frames', 'ssim', 'lpips',
                 'flicker', 'tof', 'vmaf', 'vbench_flicker', 'ref', 'rec')


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
    """Per-video rows -> {method: {videos, frames, <VIDEO_METRICS>..., counts}}: means over the videos that have
    the metric (PSNR: metrics.mean_psnr); counts: {metric: how many videos that is}."""
    out = {}
    for v in videos:
        out.setdefault(v['method'], []).append(v)
    return {m: {'videos': len(rows), 'frames': sum(r['frames'] for r in rows),
                'psnr': metrics.mean_psnr([r['psnr'] for r in rows if r['psnr'] is not None]),
                **{k: mean([r[k] for r in rows]) for k in VIDEO_METRICS if k != 'psnr'},
                'counts': {k: sum(r[k] is not None and not math.isnan(r[k]) for r in rows) for k in VIDEO_METRICS}}
            for m, rows in out.items()}


def partial_note(row, key):
    """' (1 of 2)' when a summary row's mean of `key` is over fewer of its videos than it has (some are n/a),
    '' when over all of them or none."""
    n = row.get('counts', {}).get(key)
    return f" ({n} of {row['videos']})" if n is not None and 0 < n < row['videos'] else ''


def available_metrics(videos):
    """The metrics that have a value for at least one video, in METRICS order."""
    return [k for k in METRICS if any(v.get(k) is not None for v in videos)]


# ---- CSV --------------------------------------------------------------------------------------------------

def read_table(path):
    """Rows of a per_frame.csv / per_video.csv that tools/eval.py wrote -> [{column: str}], in file order.

    The '#' comment line (the metric definitions) is skipped; metric cells are '' (not computed), 'inf' or
    decimals (parse_value). Raises OSError when the file cannot be opened."""
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
    out = {k: json_number(v) if k in SUMMARY_METRICS else v for k, v in row.items()}
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

def _row(cells):
    return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def markdown_table(summary, reference=None, published=None):
    """The per-method table in the paper's layout, | model | compression | <SUMMARY_METRICS> | videos | frames |:
    one row per measured method, then the `reference` row (the originals' VBench flicker; reference_summary)
    and the published rows (published.published_rows), marked PUBLISHED_MARK."""
    lines = [_row(['model', 'compression', *(TITLES[k] for k in SUMMARY_METRICS), 'videos', 'frames']),
             '|---|---|' + '---:|' * (len(SUMMARY_METRICS) + 2)]
    for m, s in summary.items():
        vals = [(fmt(s.get(k), DECIMALS[k]) or 'n/a') + partial_note(s, k) for k in SUMMARY_METRICS]
        lines.append(_row([m, s.get('compression') or NO_VALUE, *vals, s['videos'], s['frames']]))
    if reference:
        vals = [(fmt(reference[k], DECIMALS[k]) or 'n/a') if k == 'vbench_flicker' else NO_VALUE
                for k in SUMMARY_METRICS]
        lines.append(_row(['reference', NO_VALUE, *vals, reference['videos'], reference['frames']]))
    for r in (published or {}).get('rows', []):
        vals = [fmt(r[k], 4) if k in r else NO_VALUE for k in SUMMARY_METRICS]
        lines.append(_row([f"{r['model']} {PUBLISHED_MARK}", r['compression'], *vals, NO_VALUE, NO_VALUE]))
    return '\n'.join(lines)


def reference_summary(reference_videos):
    """{video: (frames compared, VBench flicker of the reference or None)} -> the `reference` row: {videos,
    frames, vbench_flicker (mean over the videos that have it), per_video {video: value}}; None when empty."""
    if not reference_videos:
        return None
    return {'videos': len(reference_videos), 'frames': sum(t for t, _ in reference_videos.values()),
            'vbench_flicker': mean([v for _, v in reference_videos.values()]),
            'per_video': {n: v for n, (_, v) in reference_videos.items()}}


SUMMARY_TEXT = (
    'Method values are means over videos of the per-video means over frames; per-video PSNR is the mean of the '
    'per-frame PSNRs (dB) of frames that differ (identical frames have PSNR inf). Metrics are computed on uint8 '
    'frames on the [0, 1] scale; flicker is the mean |Δrec − Δref| of consecutive-frame differences (against the '
    'reference); tOF the mean L1 distance (pixels) between the DIS optical flows of consecutive reference and '
    'reconstructed frames; VMAF is libvmaf (vmaf_v0.6.1) on the same frames. VBench flicker is VBench\'s temporal '
    'flickering of each clip alone, (255 − mean |Δ| on 0..255) / 255, 1 = no change between frames: closer to '
    'the reference row is better. rFVD is the Fréchet distance between I3D features of all of a method\'s clips '
    'and of the references\' (the notes give the protocol and clip count). "(1 of 2)": the mean is over the '
    'videos the metric applies to (the notes say why it is n/a for the others).')


def summary_markdown(summary, videos, setup, notes, reference=None, published=None):
    """summary.md: setup line, method table (markdown_table), definitions, notes and a per-video table."""
    per_video = [_row(['video', 'method', 'frames', *(TITLES[k] for k in VIDEO_METRICS)]),
                 '|---|---|---:|' + '---:|' * len(VIDEO_METRICS)]
    for v in sorted(videos, key=lambda v: (v['video'], v['method'])):
        per_video.append(_row([v['video'], v['method'], v['frames'],
                               *(fmt(v[k], DECIMALS[k]) or 'n/a' for k in VIDEO_METRICS)]))
    source = ([f"Rows marked {PUBLISHED_MARK} are copied from the {published['source']} ({published['setup']}); "
               f"they were not measured here."] if published else [])
    return '\n'.join([
        '# Evaluation summary', '', setup, '', markdown_table(summary, reference, published), '', *source,
        *([''] if source else []), SUMMARY_TEXT, '', *[f'- {n}' for n in notes], '', '## Per video', '',
        *per_video, ''])
