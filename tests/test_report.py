"""HTML report: self-contained page, relative video links, copies; rendered in headless Chromium when installed."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from tools.evaluation import report as report_module
from tools.evaluation.evaluate import evaluate
from tools.evaluation.report import write_report
from tools.report import main as report_main
from tools.video.read import read_video
from tools.video.write import write_video

CHROMIUM = next((p for p in ('/usr/bin/chromium', shutil.which('chromium'), shutil.which('chromium-browser'))
                 if p and os.path.exists(p)), None)
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--autoplay-policy=no-user-gesture-required']


@pytest.fixture(scope='module')
def evaluated(shared_videos, tmp_path_factory):
    """An eval folder for two carphone-based clips, methods preview (σ 0.08) and refined (σ 0.02)."""
    root = tmp_path_factory.mktemp('report')
    clip, info = read_video(shared_videos / 'carphone_pristine.mp4', num_frames=10)
    g = torch.Generator().manual_seed(0)
    for name, video in (('carphone', clip), ('carphone_flipped', clip.flip(-1))):
        write_video(root / 'ref' / f'{name}.mp4', video, info.fps)
        for file, sigma in (('rec.mp4', 0.02), ('preview.mp4', 0.08)):
            write_video(root / 'recon' / name / file,
                        (video + 2 * sigma * torch.randn(video.shape, generator=g)).clamp(-1, 1), info.fps)
    evaluate(root / 'ref', root / 'recon', root / 'eval', lpips=False, progress=False, log=lambda s: None)
    return root


def test_page_is_self_contained(evaluated):
    page_path = write_report(evaluated / 'report', evaluated / 'eval')
    page = page_path.read_text()
    assert page_path == evaluated / 'report' / 'index.html'
    assert '<table id="summary">' in page and '<td>refined</td>' in page and '<td>preview</td>' in page
    assert page.count('<video') == 2 * 3 and page.count('class="video"') == 2
    assert page.count('src="data:image/png;base64,') == 2 + 2  # bars + per-frame, one plot per video
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from the network
    for src in re.findall(r'<video[^>]* src="([^"]+)"', page):
        assert not src.startswith('/') and (page_path.parent / unquote(src)).is_file(), src
    order = re.findall(r'<div class="label">([^<]+)</div>', page)[:3]
    assert order == ['original', 'preview', 'refined']


def test_style_and_players_come_from_their_files(evaluated):
    """report.css and report.js are read when the page is written and inlined verbatim."""
    page = write_report(evaluated / 'report', evaluated / 'eval').read_text()
    assets = Path(report_module.__file__).parent
    assert f"<style>\n{(assets / 'report.css').read_text()}</style>" in page
    assert f"<script>var CACHE_ROWS = 2;\n{(assets / 'report.js').read_text()}</script>" in page


def test_copied_videos_make_a_portable_folder(evaluated, tmp_path):
    report = tmp_path / 'portable'
    assert report_main([str(evaluated / 'eval'), '--out', str(report), '--copy-videos']) == 0
    page = (report / 'index.html').read_text()
    srcs = re.findall(r'<video[^>]* src="([^"]+)"', page)
    assert srcs[:3] == ['videos/carphone/original.mp4', 'videos/carphone/preview.mp4', 'videos/carphone/refined.mp4']
    assert all((report / s).is_file() for s in srcs)


def test_missing_eval_outputs_one_line_error(tmp_path, capsys):
    assert report_main([str(tmp_path), '--out', str(tmp_path / 'r')]) == 2
    err = capsys.readouterr().err.strip()
    assert 'per_video.csv: missing' in err and 'tools/eval.py' in err and '\n' not in err
    assert not (tmp_path / 'r').exists()


@pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed (Debian package `chromium`)')
def test_renders_in_headless_chromium(evaluated, tmp_path):
    page = write_report(evaluated / 'report', evaluated / 'eval')
    shot = tmp_path / 'shot.png'
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={tmp_path / "profile"}',
                           f'--screenshot={shot}', '--window-size=1280,900', '--virtual-time-budget=3000',
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert('RGB'), dtype=np.float64)
    assert pixels.shape == (900, 1280, 3)
    assert pixels.std() > 20  # not a blank page: text, table, plots
    assert (np.abs(pixels - pixels[0, 0]).sum(-1) > 30).mean() > 0.05  # >5% of pixels differ from the background
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={tmp_path / "profile2"}', '--dump-dom',
                          '--virtual-time-budget=2000', page.as_uri()], capture_output=True, text=True, timeout=120)
    assert '<table id="summary">' in dom.stdout and '<td>refined</td>' in dom.stdout


class DevTools:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3: commands in, fd 4: out)."""

    def __init__(self, profile):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def fds():  # in the child: the pipe ends become fds 3 and 4, inheritable
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
            for fd in (3, 4):  # dup2(3, 3) is a no-op that keeps close-on-exec, so set it explicitly
                os.set_inheritable(fd, True)

        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={profile}',
                                      '--remote-debugging-pipe', 'about:blank'], preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf, self.next_id, self.session = b'', 0, None

    def call(self, method, params=None, timeout=60):
        self.next_id += 1
        msg = {'id': self.next_id, 'method': method, 'params': params or {}}
        if self.session:
            msg['sessionId'] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b'\0')
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b'\0' in self.buf:
                line, self.buf = self.buf.split(b'\0', 1)
                reply = json.loads(line)
                if reply.get('id') == self.next_id:
                    assert 'error' not in reply, reply
                    return reply['result']
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError('chromium closed the DevTools pipe')
            self.buf += chunk
        raise TimeoutError(method)

    def open(self, url):
        target = self.call('Target.createTarget', {'url': url})['targetId']
        self.session = self.call('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']

    def evaluate(self, expression):
        result = self.call('Runtime.evaluate', {'expression': expression, 'awaitPromise': True,
                                                'returnByValue': True})
        return result['result'].get('value')

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)


PLAYER_PROBE = """new Promise(function (done) {
  var row = document.querySelectorAll('.video')[ROW], vids = Array.prototype.slice.call(row.querySelectorAll('video'));
  var label = row.querySelector('.time'), seeks = 0, out = {};
  vids.forEach(function (v) { v.addEventListener('seeking', function () { seeks++; }); });
  function state() {
    return {t: performance.now() / 1000, times: vids.map(function (v) { return v.currentTime; }),
            seeking: vids.map(function (v) { return v.seeking; }), paused: vids.map(function (v) { return v.paused; }),
            frames: Array.prototype.map.call(row.querySelectorAll('canvas'),
                                             function (c) { return +c.dataset.frame; })};
  }
  function later(ms, f) { setTimeout(f, ms); }
  function until(test, then, ms) {
    var t0 = Date.now();
    (function poll() { if (test()) { then(); } else if (Date.now() - t0 > ms) { done({timeout: label.textContent}); }
                       else { later(30, poll); } })();
  }
  function click(name) { row.querySelector(name).click(); }
  until(function () { return vids.every(function (v) { return v.readyState >= 2; }); }, function () {
    out.durations = vids.map(function (v) { return v.duration; });
    click('.play');
    until(function () { return label.textContent.indexOf('loading') < 0; }, function () {
      seeks = 0;
      var samples = [], timer = setInterval(function () { samples.push(state()); }, 20);
      later(3000, function () {
        clearInterval(timer); out.samples = samples; out.seeks = seeks;
        click('.play');
        later(400, function () {
          out.paused = state(); out.steps = [];
          (function next(n) {
            if (n) { click('.next'); return later(300, function () { out.steps.push(state()); next(n - 1); }); }
            click('.prev');
            later(300, function () {
              out.prev = state();
              var seek = row.querySelector('.seek'); seek.value = 500; seek.dispatchEvent(new Event('input'));
              later(300, function () { out.seek = state(); done(out); });
            });
          })(9);
        });
      });
    }, 60000);
  }, 10000);
})"""


def run_probe(page, row, profile):
    chrome = DevTools(profile)
    try:
        chrome.open(page.as_uri())
        time.sleep(1.0)
        out = chrome.call('Runtime.evaluate', {'expression': PLAYER_PROBE.replace('ROW', str(row)),
                                               'awaitPromise': True, 'returnByValue': True}, timeout=120)
    finally:
        chrome.close()
    out = out['result'].get('value')
    assert 'timeout' not in out, out
    return out


def progress(values, period):
    """Total forward movement of a looping position (a wrap back to the start counts as moving on) and loops."""
    moved, loops = 0.0, 0
    for a, b in zip(values, values[1:]):
        d = b - a
        if d < -period / 2:
            d, loops = d + period, loops + 1
        moved += d
    return moved, loops


@pytest.fixture(scope='module')
def short_large(shared_videos, tmp_path_factory):
    """8 frames of 720p (Big Buck Bunny, 25 fps): rows 'bunny' (all clips 8 frames) and 'bunny_long' (original 16)."""
    root = tmp_path_factory.mktemp('short_large')
    clip, info = read_video(shared_videos / 'bigbuckbunny.mp4', num_frames=16)
    g = torch.Generator().manual_seed(0)
    short = clip[:, :8]
    write_video(root / 'ref' / 'bunny.mp4', short, info.fps)
    write_video(root / 'ref' / 'bunny_long.mp4', clip, info.fps)
    for name in ('bunny', 'bunny_long'):
        for file, sigma in (('rec.mp4', 0.02), ('preview.mp4', 0.08)):
            write_video(root / 'recon' / name / file,
                        (short + 2 * sigma * torch.randn(short.shape, generator=g)).clamp(-1, 1), info.fps)
    evaluate(root / 'ref', root / 'recon', root / 'eval', lpips=False, num_frames=8, size=72, progress=False,
                log=lambda s: None)  # metrics at 72 px (fast); the page plays the 720p files
    return root


@pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed (Debian package `chromium`)')
def test_short_large_clips_play_in_sync_and_real_time(short_large, tmp_path):
    """Decoded into memory: every player shows the same frame in every sample, at 25 frames per wall second."""
    page = write_report(short_large / 'report', short_large / 'eval')
    out = run_probe(page, 1, tmp_path / 'profile')  # bunny_long: the original is twice as long as the loop
    assert out['durations'] == pytest.approx([0.64, 0.32, 0.32], abs=0.01)
    samples = out['samples']
    assert all(len(set(s['frames'])) == 1 for s in samples)  # one frame index for all three players
    moved, loops = progress([s['frames'][0] for s in samples], 8)
    wall = samples[-1]['t'] - samples[0]['t']
    assert moved / 25 / wall > 0.8 and loops >= 5, (moved, wall, loops)  # real time: 25 frames/s, 0.32 s loop
    assert out['seeks'] == 0  # nothing is seeked while playing from memory
    k = out['paused']['frames'][0]
    assert [s['frames'] for s in out['steps']] == [[(k + i) % 8] * 3 for i in range(1, 10)]  # steps wrap around
    assert out['prev']['frames'] == [(k + 8) % 8] * 3
    assert out['seek']['frames'] == [4] * 3  # the slider at 50 % of 0.32 s: frame 4 of 0..7


@pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed (Debian package `chromium`)')
def test_native_players_follow_one_clock_without_restart_loop(short_large, tmp_path):
    """Native playback (no frame cache): players stay within 2 frames, one seek per player per loop, no stall."""
    page = write_report(short_large / 'report_native', short_large / 'eval', cache_mb=0)
    out = run_probe(page, 0, tmp_path / 'profile')
    samples = out['samples']
    assert not any(s['frames'] for s in samples)
    moved, loops = progress([s['times'][0] for s in samples], 0.32)
    wall = samples[-1]['t'] - samples[0]['t']
    assert moved / wall > 0.3 and loops >= 2, (moved, wall, loops)  # the restart loop managed 0.03
    assert out['seeks'] <= 3 * (loops + 2), (out['seeks'], loops)  # no seek storm
    spread = sorted(max(abs(a - b) for a in s['times'] for b in s['times'])
                    for s in samples if not any(s['seeking']) and max(s['times']) - min(s['times']) < 0.16)
    assert spread and spread[int(0.9 * len(spread))] <= 2 / 25 + 1e-3, spread[-5:]
    paused = out['paused']['times']
    assert all(out['paused']['paused']) and max(paused) - min(paused) < 1e-6
    k = round(paused[0] * 25 - 0.5) if paused[0] * 25 % 1 > 0.25 else int(paused[0] * 25)
    assert [s['times'] for s in out['steps']] == [[pytest.approx(((k + i) % 8 + 0.5) / 25, abs=1e-3)] * 3
                                                 for i in range(1, 10)]
    assert out['seek']['times'] == pytest.approx([0.16] * 3, abs=0.02)


EVICT_PROBE = """new Promise(function (done) {
  var rows = document.querySelectorAll('.video');
  function loaded(row) { return row.querySelectorAll('canvas').length; }
  function until(test, then) {
    var t0 = Date.now();
    (function poll() { if (test()) { then(); } else if (Date.now() - t0 > 60000) { done('timeout'); }
                       else { setTimeout(poll, 30); } })();
  }
  rows[0].querySelector('.play').click();
  until(function () { return loaded(rows[0]) === 3; }, function () {
    rows[1].querySelector('.play').click();
    until(function () { return loaded(rows[1]) === 3; }, function () {
      done({first: [loaded(rows[0]), rows[0].querySelector('video').style.display,
                    rows[0].querySelector('.play').textContent],
            second: [loaded(rows[1]), rows[1].querySelector('.play').textContent]});
    });
  });
})"""


@pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed (Debian package `chromium`)')
def test_decoded_frames_are_freed_beyond_the_row_limit(short_large, tmp_path, monkeypatch):
    monkeypatch.setattr('tools.evaluation.report.CACHE_ROWS', 1)
    page = write_report(short_large / 'report_one', short_large / 'eval')
    chrome = DevTools(tmp_path / 'profile')
    try:
        chrome.open(page.as_uri())
        time.sleep(1.0)
        out = chrome.call('Runtime.evaluate', {'expression': EVICT_PROBE, 'awaitPromise': True,
                                               'returnByValue': True}, timeout=120)['result'].get('value')
    finally:
        chrome.close()
    assert out == {'first': [0, '', 'play'], 'second': [3, 'pause']}, out
