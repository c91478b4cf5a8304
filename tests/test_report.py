"""HTML report: self-contained page, relative video links, copies; rendered in headless Chromium when installed."""
import json
import os
import re
import shutil
import subprocess
import time
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from tools import eval as ev
from tools.report import main as report_main
from tools.report import write_report
from tools.video_io import read_video, write_video

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
    ev.evaluate(root / 'ref', root / 'recon', root / 'eval', lpips=False, progress=False, log=lambda s: None)
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


SYNC_PROBE = """new Promise(function (done) {
  var row = document.querySelector('.video'), vids = Array.prototype.slice.call(row.querySelectorAll('video'));
  function times() { return vids.map(function (v) { return v.currentTime; }); }
  function when(test, then, ms) {
    var t0 = Date.now();
    (function poll() { if (test()) { then(); } else if (Date.now() - t0 > (ms || 8000)) { done({timeout: times()}); }
                       else { setTimeout(poll, 30); } })();
  }
  var out = {};
  when(function () { return vids.every(function (v) { return v.readyState >= 2; }); }, function () {
    row.querySelector('.play').click();
    when(function () { return vids[0].currentTime > 0.15; }, function () {
      out.playing = vids.map(function (v) { return !v.paused; });
      row.querySelector('.play').click();
      setTimeout(function () {
        out.paused = times();
        var seek = row.querySelector('.seek'); seek.value = 500; seek.dispatchEvent(new Event('input'));
        setTimeout(function () { out.seek = times(); out.duration = vids[0].duration; done(out); }, 300);
      }, 300);
    });
  });
})"""


@pytest.mark.skipif(CHROMIUM is None, reason='headless Chromium not installed (Debian package `chromium`)')
def test_players_play_pause_and_seek_together(evaluated, tmp_path):
    page = write_report(evaluated / 'report', evaluated / 'eval')
    chrome = DevTools(tmp_path / 'profile')
    try:
        chrome.open(page.as_uri())
        time.sleep(1.0)
        out = chrome.evaluate(SYNC_PROBE)
    finally:
        chrome.close()
    assert 'timeout' not in out, out
    assert out['playing'] == [True, True, True]
    assert max(out['paused']) - min(out['paused']) < 1e-6 and out['paused'][0] > 0.1  # pause aligns all
    assert out['seek'] == pytest.approx([out['duration'] / 2] * 3, abs=0.02)
