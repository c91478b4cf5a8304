// Players of the evaluation report (report.py fills in CACHE_ROWS before this script).
// One clock per row, in seconds, looped over the shortest clip; it follows wall time times the speed.
// Short clips (all players' decoded frames within the row's data-cache-mb) are decoded once into memory when
// play is first pressed and drawn on canvases from the clock: every player shows the same frame index, in real
// time, and the loop costs nothing. Longer clips play natively: the clock holds while any player seeks or waits
// for data (the others pause meanwhile, so none runs ahead and none is restarted because of another); a small
// drift is absorbed by nudging a player's playbackRate, a player more than 3 frames (or half the loop) off, as
// at the loop point, is seeked to the clock once. Pause and the frame buttons put every player on one frame;
// stepping past the last frame wraps to the first. Each canvas carries the index it shows in data-frame.
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
    label.textContent = (loading ? 'loading frames \u00b7 ' : '') + 'frame ' + (index() + 1) + ' / ' + count() +
      ' \u00b7 ' + clock.toFixed(2) + ' / ' + L.toFixed(2) + ' s';
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
