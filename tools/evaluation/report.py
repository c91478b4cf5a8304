"""HTML report of an evaluation: per video the original and each reconstruction side by side (synchronised
HTML5 players), the metric tables and the plots, in one page that works offline, opened from disk.

The page is built from what tools/eval.py wrote in an evaluation folder (per_video.csv, per_frame.csv,
summary.json, *.png). Its style (report.css) and players (report.js) sit beside this module and are inlined,
as are the plots (PNG data URIs); videos are linked by paths relative to the report folder, or copied to
REPORT_DIR/videos so the folder can be moved or shared.
"""
import base64
import html
import io
import math
import os
import shutil
from pathlib import Path
from urllib.parse import quote

from tools.evaluation.errors import EvalError, check_folder
from tools.evaluation.plots import plot_per_frame
from tools.evaluation.published import PUBLISHED_MARK
from tools.evaluation.tables import (DECIMALS, HIGHER_IS_BETTER, METRICS, NO_VALUE, RANKED, TITLES, VIDEO_METRICS,
                                     available_metrics, fmt, load_summary, metric_value, parse_value, partial_note,
                                     read_table)
from tools.files import write_text_atomic
from tools.video.read import VideoReadError, probe_video

CACHE_MB = 512  # per video row: short clips are decoded once and played from memory (see report.js)
CACHE_ROWS = 2  # rows that keep their decoded frames at once; playing a third frees the oldest
ASSETS = Path(__file__).resolve().parent  # report.css, report.js
EVAL_FILES = ('per_video.csv', 'per_frame.csv', 'summary.json')
CONTROLS = ('<div class="controls"><button class="play">play</button><button class="prev">&larr; frame</button>'
            '<button class="next">frame &rarr;</button><input class="seek" type="range" min="0" max="1000" '
            'value="0"><span class="time">0.00 s</span><select class="rate"><option value="1">1x</option>'
            '<option value="0.5">0.5x</option><option value="0.25">0.25x</option></select></div>')
TABLE_NOTE = ('<p class="note">Method values are means over videos of per-video means over frames; per-video '
              'PSNR is the mean of per-frame PSNRs of frames that differ; "(1 of 2)": over the videos the metric '
              'applies to. VBench flicker: of each clip alone (1 = no change between frames), nearest the '
              'reference row is best; flicker: against the reference. Bold: best per column among the rows '
              'measured here.</p>')


def _png_data_uri(source):
    """A PNG file path or PNG bytes -> data: URI."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    return 'data:image/png;base64,' + base64.b64encode(data).decode('ascii')


def _table(rows, first_col, keys, table_id=None, suffix=None, unranked=()):
    """HTML table: rows = [(label, {metric: float|None|str}, extra cells)], best value per RANKED metric in bold;
    suffix(label, key): text after a cell's value (e.g. ' (1 of 2)'), or None; unranked: more rows after them,
    in the same form, taking no part in the best values (the reference and published rows), class "other"."""
    best = {}
    for k in (k for k in keys if k in RANKED):
        vals = [r[1].get(k) for r in rows if r[1].get(k) is not None and not math.isnan(r[1][k])]
        if len(rows) > 1 and vals:
            best[k] = max(vals) if k in HIGHER_IS_BETTER else min(vals)
    ident = f' id="{table_id}"' if table_id else ''
    head = ''.join(f'<th>{html.escape(h)}</th>' for h in [first_col, *(TITLES.get(k, k) for k in keys)])
    body = []
    for i, (label, vals, *_) in enumerate([*rows, *unranked]):
        ranked = i < len(rows)
        cells = [f'<td>{html.escape(str(label))}</td>']
        for k in keys:
            v = vals.get(k)
            cls = ' class="best"' if ranked and k in best and v == best[k] else ''
            text = v if isinstance(v, (int, str)) else (fmt(v, DECIMALS.get(k, 4)) or 'n/a')
            text = f'{text}{suffix(label, k) if suffix and ranked else ""}'
            cells.append(f'<td{cls}>{html.escape(str(text))}</td>')
        body.append(('<tr>' if ranked else '<tr class="other">') + ''.join(cells) + '</tr>')
    return f'<table{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _video_src(path, report_dir, copy_to=None):
    """URL of a video for the page: relative to the report folder (copied first when copy_to is given)."""
    path = Path(path)
    if copy_to is not None:
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy_to)
        path = copy_to
    return quote(Path(os.path.relpath(path.resolve(), report_dir.resolve())).as_posix())


def _fps(path):
    """The video's frame rate for the players; 30 when it is unknown or the file cannot be read."""
    try:
        return probe_video(path).fps or 30.0
    except VideoReadError:
        return 30.0


def _summary_rows(info, keys):
    """(measured rows, reference and published rows) of the summary table, in _table's form."""
    rows = [(m, {'compression': s.get('compression') or NO_VALUE, 'videos': s['videos'], 'frames': s['frames'],
                 **{k: metric_value(s, k) for k in keys}}) for m, s in info['methods'].items()]
    other, ref = [], info.get('reference')
    if ref:
        other.append(('reference', {'compression': NO_VALUE, 'videos': ref['videos'], 'frames': ref['frames'],
                                    **{k: ref['vbench_flicker'] if k == 'vbench_flicker' else NO_VALUE
                                       for k in keys}}))
    for r in (info.get('published') or {}).get('rows', []):
        other.append((f"{r['model']} {PUBLISHED_MARK}", {'compression': r['compression'], 'videos': NO_VALUE,
                      'frames': NO_VALUE, **{k: fmt(r[k], 4) if k in r else NO_VALUE for k in keys}}))
    return rows, other


def _summary_section(info, keys, eval_dir):
    """The summary under the title: the setup line, the per-method table in the paper's layout (model,
    compression, metrics; then the reference and published rows), the notes and the evaluation's plots."""
    methods = info['methods']
    keys = [*keys, 'vbench_flicker', *(['rfvd'] if info.get('fvd') else [])]
    rows, other = _summary_rows(info, keys)
    parts = [f'<p class="note">{html.escape(info["setup"])}</p>', '<h2>Summary</h2>',
             _table(rows, 'model', ['compression', *keys, 'videos', 'frames'], 'summary',
                    suffix=lambda m, k: partial_note(methods[m], k), unranked=other)]
    published = info.get('published')
    if published:
        parts.append(f'<p class="note">Rows marked {PUBLISHED_MARK} are copied from the '
                     f'{html.escape(published["source"])} ({html.escape(published["setup"])}); they were not '
                     f'measured here.</p>')
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in info['notes']]
    parts.append(TABLE_NOTE)
    for png, alt in (('bars.png', 'mean per method'), ('per_frame.png', 'metrics per frame')):
        if (eval_dir / png).is_file():
            parts.append(f'<p><img class="plot" alt="{alt}" src="{_png_data_uri(eval_dir / png)}"></p>')
    return parts


def _video_section(name, rows, order, keys, frames, report_dir, copy_videos, per_video_plots, cache_mb):
    """One video's row: players (original first, then the methods in order), its table and per-frame plot.
    rows: {method: per_video.csv row}; frames: its per-frame rows with parsed metric values."""
    first = rows[order[0]]
    dest = report_dir / 'videos' / name if copy_videos else None
    clips = [('original', first['ref'], dest / f'original{Path(first["ref"]).suffix}' if dest else None)]
    clips += [(m, rows[m]['rec'], dest / f'{m}{Path(rows[m]["rec"]).suffix}' if dest else None) for m in order]
    players = ''.join(
        f'<div class="clip"><div class="label">{html.escape(label)}</div>'
        f'<video muted playsinline preload="auto" src="{_video_src(src, report_dir, copy)}"></video></div>'
        for label, src, copy in clips)
    columns = [*keys, *(k for k in VIDEO_METRICS if k not in METRICS and any(rows[m].get(k) for m in order))]
    table = _table([(m, {'frames': int(rows[m]['frames']), **{k: parse_value(rows[m].get(k)) for k in columns}})
                    for m in order], 'method', ['frames', *columns])
    plot = ''
    if per_video_plots:
        buf = io.BytesIO()
        plot_per_frame(buf, frames, keys, width=3.2, height=2.4)
        plot = f'<p><img class="plot" alt="{html.escape(name)} per frame" src="{_png_data_uri(buf.getvalue())}"></p>'
    return (f'<div class="video" data-fps="{_fps(first["rec"]):.4f}" data-cache-mb="{cache_mb:g}">'
            f'<h2>{html.escape(name)}</h2>{CONTROLS}<div class="clips">{players}</div>{table}{plot}</div>')


def _page(title, parts):
    """The HTML document: the style and the players' script (report.css, report.js) inline."""
    css = (ASSETS / 'report.css').read_text()
    js = (ASSETS / 'report.js').read_text()
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>\n{css}</style></head>\n'
            f'<body>\n' + '\n'.join(parts) + f'\n<script>var CACHE_ROWS = {CACHE_ROWS};\n{js}</script>\n'
            f'</body></html>\n')


def write_report(report_dir, eval_dir, title='CascadeV reconstruction report', copy_videos=False,
                 per_video_plots=True, cache_mb=CACHE_MB):
    """Write REPORT_DIR/index.html for the outputs of tools/eval.py in eval_dir; returns its path.

    copy_videos: copy the clips to REPORT_DIR/videos/NAME/ (a portable folder) instead of linking them.
    cache_mb: a video row whose players' decoded RGBA frames fit in this many MiB is played from memory
    (exact sync, seamless loop); 0 plays every row with the native players. Raises EvalError (one line) when
    eval_dir lacks an output or report_dir is a file or cannot be written; nothing is written then."""
    eval_dir, report_dir = Path(eval_dir), Path(report_dir)
    for name in EVAL_FILES:
        if not (eval_dir / name).is_file():
            raise EvalError(f"{eval_dir / name}: missing; run tools/eval.py with --out {eval_dir} first")
    check_folder('--report', report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    info = load_summary(eval_dir / 'summary.json')
    videos = read_table(eval_dir / 'per_video.csv')
    keys = available_metrics([{k: parse_value(v.get(k)) for k in METRICS} for v in videos])
    by_video, frames_of = {}, {}
    for v in videos:
        by_video.setdefault(v['video'], {})[v['method']] = v
    for r in read_table(eval_dir / 'per_frame.csv'):
        row = {'method': r['method'], 'video': r['video'], 'frame': int(r['frame'])}
        frames_of.setdefault(r['video'], []).append({**row, **{k: parse_value(r.get(k)) for k in METRICS}})
    parts = [f'<h1>{html.escape(title)}</h1>', *_summary_section(info, keys, eval_dir)]
    for name, rows in by_video.items():
        order = [m for m in info['methods'] if m in rows]
        parts.append(_video_section(name, rows, order, keys, frames_of[name], report_dir, copy_videos,
                                    per_video_plots, cache_mb))
    out = report_dir / 'index.html'
    write_text_atomic(out, _page(title, parts))
    return out
