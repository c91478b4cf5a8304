"""HTML report of an evaluation: per video the original and each reconstruction side by side (synchronised
HTML5 players), the metric tables and the plots, in one page that works offline, opened from disk.

    python tools/report.py EVAL_DIR --out REPORT_DIR [--copy-videos]

EVAL_DIR is what tools/eval.py wrote (per_video.csv, per_frame.csv, summary.json, *.png). CSS, JS and plots are
inline; videos are linked by paths relative to REPORT_DIR (or copied to REPORT_DIR/videos with --copy-videos,
so the folder can be moved or shared).
"""
import argparse
import base64
import html
import io
import math
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

if __package__ in (None, ''):  # run as `python tools/report.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.evaluation.tables import (DECIMALS, HIGHER_IS_BETTER, METRICS, TITLES, EvalError, available_metrics, fmt,

    load_summary, metric_value, parse_value, plot_per_frame, read_table)
from tools.files import write_text_atomic

CACHE_MB = 512  # per video row: short clips are decoded once and played from memory (see JS)
CACHE_ROWS = 2  # rows that keep their decoded frames at once; playing a third frees the oldest

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
table { border-collapse: collapse; margin: 8px 0; background: #fff; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eef; } td.best { font-weight: bold; }
.note { color: #555; font-size: 13px; }
.video { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px; margin: 18px 0; }
.clips { display: flex; gap: 8px; flex-wrap: wrap; }
.clip { flex: 1 1 0; min-width: 200px; }
.clip video, .clip canvas { width: 100%; background: #000; display: block; cursor: pointer; }
.clip .label { font-weight: 600; margin-bottom: 3px; }
.controls { display: flex; gap: 8px; align-items: center; margin: 6px 0; }
.controls input[type=range] { flex: 1; }
img.plot { max-width: 100%; border: 1px solid #ddd; background: #fff; }
"""

# One clock per row, in seconds, looped over the shortest clip; it follows wall time times the speed.
# Short clips (all players' decoded frames within the row's data-cache-mb) are decoded once into memory when
# play is first pressed and drawn on canvases from the clock: every player shows the same frame index, in real
# time, and the loop costs nothing. Longer clips play natively: the clock holds while any player seeks or waits
# for data (the others pause meanwhile, so none runs ahead and none is restarted because of another); a small
# drift is absorbed by nudging a player's playbackRate, a player more than 3 frames (or half the loop) off, as
# at the loop point, is seeked to the clock once. Pause and the frame buttons put every player on one frame;
# stepping past the last frame wraps to the first. Each canvas carries the index it shows in data-frame.
JS = """
var cachedRows = [];  // rows holding decoded frames, oldest first; at most CACHE_ROWS of them at a time
document.querySelectorAll('.video').forEach(function (row) {
  var vids = Array.prototype.slice.call(row.querySelectorAll('video'));
  var btn = row.querySelector('.play'), seek = row.querySelector('.seek'), label = row.querySelector('.time');
  var rateSel = row.querySelector('.rate'), fps = parseFloat(row.dataset.fps || '30'), step = 1 / fps;
  var budget = parseFloat(row.dataset.cacheMb || '0') * 1048576;
  var clock = 0, rate = 1, running = false, last = 0, cache = null, canvases = null, loading = false;
  function length() {
    var d = vids.map(function (v) { return v.duration; }).filter(isFinite);
    return d.length ? Math.min.apply(null, d) : 0;
  }
  function count() { return Math.max(1, Math.round(length() * fps)); }
  function index() { return Math.max(0, Math.min(count() - 1, Math.floor(clock * fps + 1e-6))); }
  function busy(v) { return v.seeking || v.readyState < 2; }
  function show() {
    var L = length();
    if (L) { seek.value = Math.round(clock / L * 1000); }
    if (cache) {
      var k = index();
      canvases.forEach(function (c, i) {
        if (c.dataset.frame !== String(k)) { c.getContext('2d').drawImage(cache[i][k], 0, 0); c.dataset.frame = k; }
      });
    }
    label.textContent = (loading ? 'loading frames \\u00b7 ' : '') + 'frame ' + (index() + 1) + ' / ' + count() +
      ' \\u00b7 ' + clock.toFixed(2) + ' / ' + L.toFixed(2) + ' s';
  }
  function moveTo(t) {
    var L = length();
    clock = L ? Math.min(Math.max(t, 0), L) : 0;
    if (!cache) { vids.forEach(function (v) { v.currentTime = clock; }); }
    show();
  }
  function seekTo(v, t) {
    return new Promise(function (done) {
      v.addEventListener('seeked', function () { done(); }, {once: true});
      v.currentTime = t;
    });
  }
  async function grab(v) {
    var frames = [];
    for (var k = 0; k < count(); k++) {
      await seekTo(v, (k + 0.5) / fps);
      frames.push(await createImageBitmap(v));
    }
    return frames;
  }
  async function load() {
    var bytes = vids.reduce(function (s, v) { return s + v.videoWidth * v.videoHeight * 4 * count(); }, 0);
    if (!length() || bytes > budget) { return; }
    loading = true; show();
    var frames = await Promise.all(vids.map(grab));
    canvases = vids.map(function (v) {
      var c = document.createElement('canvas');
      c.width = v.videoWidth; c.height = v.videoHeight; c.addEventListener('click', toggle);
      v.parentNode.insertBefore(c, v); v.style.display = 'none';
      return c;
    });
    cache = frames; loading = false;
    cachedRows.push(row);
    if (cachedRows.length > CACHE_ROWS) { cachedRows.shift().evict(); }
  }
  row.evict = function () {  // back to the native players; the frames are decoded again on the next play
    if (running) { pause(); }
    cache.forEach(function (frames) { frames.forEach(function (b) { b.close(); }); });
    canvases.forEach(function (c) { c.remove(); });
    vids.forEach(function (v) { v.style.display = ''; });
    cache = canvases = null;
    moveTo(clock);
  };
  function follow(L) {
    var held = vids.some(busy);
    vids.forEach(function (v) {
      if (held) { if (!busy(v) && !v.paused) { v.pause(); } return; }
      var d = v.currentTime - clock;
      if (Math.abs(d) > Math.min(3 * step, L / 2)) { v.playbackRate = rate; v.currentTime = clock; return; }
      var r = rate * (1 - Math.max(-0.25, Math.min(0.25, d / (4 * step))));
      if (Math.abs(v.playbackRate - r) > 0.01) { v.playbackRate = r; }
      if (v.paused) { v.play().catch(function () {}); }
    });
    return held;
  }
  function tick(now) {
    if (!running) { return; }
    var L = length(), held = cache ? false : follow(L);
    if (L && !held) {
      clock += Math.max(0, now - last) / 1000 * rate;  // a frame's timestamp can precede play()'s now()
      if (clock >= L) { clock -= L * Math.floor(clock / L); }
    }
    last = Math.max(last, now);
    show();
    requestAnimationFrame(tick);
  }
  async function play() {
    if (running || loading) { return; }
    if (!cache && budget) {
      try { await load(); } catch (e) { loading = false; budget = 0; }  // cannot decode here: play natively
    }
    running = true; btn.textContent = 'pause';
    if (clock >= length() - step / 2) { moveTo(0); }
    last = performance.now();
    requestAnimationFrame(tick);
  }
  function pause() {
    running = false; btn.textContent = 'play';
    vids.forEach(function (v) { v.pause(); v.playbackRate = rate; });
    moveTo(clock);
  }
  function frameStep(n) {
    if (loading) { return; }
    if (running) { pause(); }
    var k = Math.floor(clock * fps + 1e-6) + n, c = count();
    moveTo(((k % c + c) % c + 0.5) / fps);
  }
  function toggle() { if (running) { pause(); } else { play(); } }
  btn.addEventListener('click', toggle);
  vids.forEach(function (v) {
    v.addEventListener('click', toggle);
    v.addEventListener('loadedmetadata', show);
  });
  row.querySelector('.prev').addEventListener('click', function () { frameStep(-1); });
  row.querySelector('.next').addEventListener('click', function () { frameStep(1); });
  seek.addEventListener('input', function () { if (!loading) { moveTo(seek.value / 1000 * length()); } });
  rateSel.addEventListener('change', function () { rate = parseFloat(rateSel.value); });
});
"""


def _png_data_uri(source):
    """A PNG file path or PNG bytes -> data: URI."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    return 'data:image/png;base64,' + base64.b64encode(data).decode('ascii')


def _table(rows, first_col, keys, table_id=None):
    """HTML table: rows = [(label, {metric: float|None}, extra cells)], best value per metric in bold."""
    best = {}
    for k in (k for k in keys if k in METRICS):
        vals = [r[1].get(k) for r in rows if r[1].get(k) is not None and not math.isnan(r[1][k])]
        if len(rows) > 1 and vals:
            best[k] = max(vals) if k in HIGHER_IS_BETTER else min(vals)
    ident = f' id="{table_id}"' if table_id else ''
    head = ''.join(f'<th>{html.escape(h)}</th>' for h in [first_col, *(TITLES.get(k, k) for k in keys)])
    body = []
    for label, vals, *_ in rows:
        cells = [f'<td>{html.escape(str(label))}</td>']
        for k in keys:
            v = vals.get(k)
            cls = ' class="best"' if k in best and v == best[k] else ''
            text = v if isinstance(v, (int, str)) else (fmt(v, DECIMALS.get(k, 4)) or 'n/a')
            cells.append(f'<td{cls}>{html.escape(str(text))}</td>')
        body.append('<tr>' + ''.join(cells) + '</tr>')
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
    from tools.video.read import VideoReadError, probe_video
    try:
        return probe_video(path).fps or 30.0
    except VideoReadError:
        return 30.0


def write_report(report_dir, eval_dir, title='CascadeV reconstruction report', copy_videos=False,
                 per_video_plots=True, cache_mb=CACHE_MB):
    """Write REPORT_DIR/index.html for the outputs of tools/eval.py in eval_dir; returns its path.

    cache_mb: a video row whose players' decoded RGBA frames fit in this many MiB is played from memory
    (exact sync, seamless loop); 0 plays every row with the native players."""
    eval_dir, report_dir = Path(eval_dir), Path(report_dir)
    for name in ('per_video.csv', 'per_frame.csv', 'summary.json'):
        if not (eval_dir / name).is_file():
            raise EvalError(f"{eval_dir / name}: missing; run tools/eval.py with --out {eval_dir} first")
    if report_dir.exists() and not report_dir.is_dir():
        raise EvalError(f"--report {report_dir}: is a file; pass a folder for the report")
    report_dir.mkdir(parents=True, exist_ok=True)
    info = load_summary(eval_dir / 'summary.json')
    videos = read_table(eval_dir / 'per_video.csv')
    frames = read_table(eval_dir / 'per_frame.csv')
    methods = list(info['methods'])
    keys = available_metrics([{k: parse_value(v.get(k)) for k in METRICS} for v in videos])

    parts = [f'<h1>{html.escape(title)}</h1>', f'<p class="note">{html.escape(info["setup"])}</p>',
             '<h2>Summary</h2>',
             _table([(m, {'videos': s['videos'], 'frames': s['frames'], **{k: metric_value(s, k) for k in keys}})
                     for m, s in info['methods'].items()], 'method', ['videos', 'frames', *keys], 'summary')]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in info['notes']]
    parts.append('<p class="note">Method values are means over videos of per-video means over frames; per-video '
                 'PSNR is the mean of per-frame PSNRs of frames that differ. Bold: best per column.</p>')
    for png, alt in (('bars.png', 'mean per method'), ('per_frame.png', 'metrics per frame')):
        if (eval_dir / png).is_file():
            parts.append(f'<p><img class="plot" alt="{alt}" src="{_png_data_uri(eval_dir / png)}"></p>')

    by_video, frames_of = {}, {}
    for v in videos:
        by_video.setdefault(v['video'], {})[v['method']] = v
    for r in frames:
        row = {'method': r['method'], 'video': r['video'], 'frame': int(r['frame'])}
        frames_of.setdefault(r['video'], []).append({**row, **{k: parse_value(r.get(k)) for k in METRICS}})
    for name, rows in by_video.items():
        order = [m for m in methods if m in rows]
        first = rows[order[0]]
        dest = report_dir / 'videos' / name if copy_videos else None
        clips = [('original', first['ref'], dest / f'original{Path(first["ref"]).suffix}' if dest else None)]
        clips += [(m, rows[m]['rec'], dest / f'{m}{Path(rows[m]["rec"]).suffix}' if dest else None) for m in order]
        players = ''.join(
            f'<div class="clip"><div class="label">{html.escape(label)}</div>'
            f'<video muted playsinline preload="auto" src="{_video_src(src, report_dir, copy)}"></video></div>'
            for label, src, copy in clips)
        table = _table([(m, {'frames': int(rows[m]['frames']), **{k: parse_value(rows[m][k]) for k in keys}})
                        for m in order], 'method', ['frames', *keys])
        plot = ''
        if per_video_plots:
            buf = io.BytesIO()
            plot_per_frame(buf, frames_of[name], keys, width=3.2, height=2.4)
            uri = _png_data_uri(buf.getvalue())
            plot = f'<p><img class="plot" alt="{html.escape(name)} per frame" src="{uri}"></p>'
        parts.append(
            f'<div class="video" data-fps="{_fps(first["rec"]):.4f}" data-cache-mb="{cache_mb:g}">'
            f'<h2>{html.escape(name)}</h2>'
            f'<div class="controls"><button class="play">play</button><button class="prev">&larr; frame</button>'
            f'<button class="next">frame &rarr;</button><input class="seek" type="range" min="0" max="1000" value="0">'
            f'<span class="time">0.00 s</span><select class="rate"><option value="1">1x</option>'
            f'<option value="0.5">0.5x</option><option value="0.25">0.25x</option></select></div>'
            f'<div class="clips">{players}</div>{table}{plot}</div>')

    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>\n'
            f'<body>\n' + '\n'.join(parts) + f'\n<script>var CACHE_ROWS = {CACHE_ROWS};{JS}</script>\n'
            f'</body></html>\n')
    out = report_dir / 'index.html'
    write_text_atomic(out, page)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('eval_dir', help='folder written by tools/eval.py')
    p.add_argument('--out', required=True, help='report folder (index.html is written there)')
    p.add_argument('--title', default='CascadeV reconstruction report')
    p.add_argument('--copy-videos', action='store_true', help='copy the clips next to the report (portable)')
    args = p.parse_args(argv)
    try:
        print(write_report(args.out, args.eval_dir, args.title, args.copy_videos))
    except EvalError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
