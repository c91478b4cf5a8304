"""Evaluate reconstructions against their originals: match → score → describe → write.

    result = evaluate('videos/', 'outputs/recon', out_dir='outputs/recon/.eval', device='cpu', vmaf=False)

match pairs each reference with each method's reconstruction of the same name (matching.py) and finds each
method's compression; score reads every pair through its frame plan (clips.py) and computes per-frame PSNR,
SSIM, LPIPS, flicker, tOF and VMAF (scoring.py, metrics.py), VBench flicker per video (vbench.py) and, with
fvd, the clip features for rFVD per method (fvd.py); describe says what was compared and what is missing;
write puts per_frame.csv, per_video.csv, summary.md, summary.json, per_frame.png (and bars.png for several
methods) in out_dir, and optionally an HTML report (report.py). The options are the fields of EvalSettings.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from tools.evaluation.clips import ReferenceReads, flag_plan, load_frames, match_size, recon_plan
from tools.evaluation.describe import describe
from tools.evaluation.errors import EvalError, EvalFailed, check_folder
from tools.evaluation.fvd import DETECTOR_FILE, FeatureSets
from tools.evaluation.matching import (default_out_dir, list_references, method_compression, missing_names,
                                       resolve_methods)
from tools.evaluation.plots import plot_bars, plot_per_frame
from tools.evaluation.report import write_report
from tools.evaluation.scoring import frame_metrics, load_scorers, not_applicable, video_row
from tools.evaluation.tables import (METRICS, PER_FRAME_NOTE, PER_VIDEO_NOTE, VIDEO_COLUMNS, VIDEO_METRICS,
                                     available_metrics, csv_text, fmt, markdown_table, summarize, summary_json,
                                     summary_markdown)
from tools.evaluation.vbench import temporal_flickering
from tools.files import write_text_atomic
from tools.video.read import VideoReadError, probe_video

__all__ = ['EvalError', 'EvalFailed', 'EvalSettings', 'PROTOCOLS', 'evaluate']

# Named evaluation presets: flag defaults (explicit flags still win) and the source fps the numbers assume.
PROTOCOLS = {
    # The Inter4K-200 table (docs/evaluation.md, "Reproducing the Inter4K-200 protocol"): the original's
    # preprocessing to a 1024 short edge, then the centre square, of 30 fps clips; every frame compared.
    'cascadev-inter4k': {'size': 1024, 'square': True, 'preprocess': 'cascadev', 'frame_stride': 1,
                         'num_frames': None, 'fps': 30},
}


@dataclass
class EvalSettings:
    """How an evaluation compares and what it writes (tools/eval.py's flags).

    size, square, preprocess, start, stride, num_frames: the frame plan of reconstructions without a done.json
    beside them (recon.py's --size, --square, --preprocess, --start, --frame-stride, --num-frames; applied to
    the reference only; num_frames None: all frames). lpips: compute LPIPS when its weights are present.
    vmaf: also run libvmaf (EvalError when ffmpeg lacks it). device: 'auto' | 'cpu' | 'cuda[:i]'.
    protocol: a PROTOCOLS name, recorded in the outputs and checked against the clips' fps (its frame
    settings are the caller's to apply, as tools/eval.py does), and whose published rows (published.py) the
    tables list. fvd: rFVD per method with the TorchScript I3D detector at fvd_detector (missing: n/a with one
    line). report_dir: also write an HTML report there, with the clips copied next to it when copy_videos.
    progress: a progress bar over the references.
    """
    size: int | None = None
    square: bool = False
    preprocess: str = 'default'
    start: int = 0
    stride: int = 1
    num_frames: int | None = None
    lpips: bool = True
    vmaf: bool = False
    device: str = 'auto'
    protocol: str | None = None
    report_dir: str | Path | None = None
    copy_videos: bool = False
    progress: bool = True
    fvd: bool = False
    fvd_detector: str | Path = DETECTOR_FILE

    def plan_flags(self):
        """The frame-plan settings as clips.flag_plan takes them."""
        return dict(size=self.size, square=self.square, preprocess=self.preprocess, start=self.start,
                    stride=self.stride, num_frames=self.num_frames)

    def plan_flags_given(self):
        """Whether any frame-plan setting differs from its default."""
        return bool(self.size or self.square or self.preprocess != 'default' or self.start or self.stride != 1
                    or self.num_frames)


class Warnings:
    """log('warning: ' + message), each message (or each key, when one is given) once."""

    def __init__(self, log):
        self.log, self.seen = log, set()

    def __call__(self, message, key=None):
        if (key or message) not in self.seen:
            self.seen.add(key or message)
            self.log(f'warning: {message}')


@dataclass
class Matched:
    """The pairs to compare: refs {name: path}, methods {label: {name: path}}, missing {label: [names]},
    compression {label: 'T×H×W, C ch' or None} (matching.method_compression)."""
    refs: dict
    methods: dict
    missing: dict
    out_dir: Path
    compression: dict = field(default_factory=dict)


@dataclass
class Scores:
    """Per-frame rows, per-video rows, messages of the pairs skipped as unreadable and of those dropped because
    their scoring failed, notes on the pairs scored (lengths that differ, metrics that do not apply), how
    many pairs were compared through the frame plan in recon.py's done.json, the references' own VBench
    flicker {name: (frames, value)} (over the frames of the first pair scored of each), and the rFVD features
    (fvd.FeatureSets, None without a detector)."""
    frames: list = field(default_factory=list)
    videos: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    from_done: int = 0
    reference: dict = field(default_factory=dict)
    features: FeatureSets | None = None

    def note(self, warn, message):
        """warn(message) and keep it for the summary's notes, once."""
        if message not in self.notes:
            self.notes.append(message)
            warn(message)


# ---- match ------------------------------------------------------------------------------------------

def match(ref, rec, out_dir=None, report_dir=None):
    """References and methods matched by name, and the output folder, checked writable with the report folder;
    raises EvalError (one line)."""
    refs = list_references(ref)
    methods = resolve_methods(rec)
    out_dir = Path(out_dir) if out_dir else default_out_dir(rec)
    check_folder('--out', out_dir)
    if report_dir:
        check_folder('--report', report_dir)
    compression = {m: method_compression(found) for m, found in methods.items()}
    return Matched(refs, methods, missing_names(refs, methods), out_dir, compression)


# ---- score ------------------------------------------------------------------------------------------

def pair_frames(name, reference, rec_path, settings, warn):
    """(reference frames, reconstruction frames, compared through a done.json plan?) of one pair, uint8
    (T, H, W, 3) of one (H, W); raises VideoReadError or EvalError when the pair cannot be compared."""
    recorded = recon_plan(rec_path, name)
    if recorded is not None and settings.plan_flags_given():
        warn(f'{rec_path}: compared through the frame plan in its done.json (recon.py\'s flags); '
             f'--size/--square/--preprocess/--start/--frame-stride/--num-frames apply only to '
             f'reconstructions without one', key='plan-over-flags')
    ref_u8 = reference.frames(recorded or flag_plan(reference.path, **settings.plan_flags()))
    rec_u8 = load_frames(rec_path, num_frames=len(ref_u8))
    rec_u8 = match_size(rec_u8, ref_u8.shape[1:3], rec_path, lambda s: warn(s, key='resize'))
    return ref_u8, rec_u8, recorded is not None


def check_lengths_and_fps(ref_u8, rec_u8, ref_path, rec_path, settings, warn, note):
    """The number of frames compared: the reference's, or the reconstruction's when it is shorter. A length
    that differs either way is noted (note(message)); warns when --protocol assumes another frame rate than
    the reference's at the stride."""
    t = min(len(ref_u8), len(rec_u8))
    stored = max(len(rec_u8), probe_video(rec_path).num_frames)      # rec_u8 is read up to the reference's length
    if stored != len(ref_u8):
        note(f'{rec_path}: {stored} frames vs {len(ref_u8)} in {ref_path}; the first {t} are compared')
    expect = PROTOCOLS[settings.protocol]['fps'] if settings.protocol else None
    if expect and abs(probe_video(ref_path).fps / settings.stride - expect) > 0.5:
        warn(f'{ref_path}: {probe_video(ref_path).fps:g} fps with --frame-stride {settings.stride}, but '
             f'--protocol {settings.protocol} assumes {expect} fps clips; use a {expect} fps copy or a matching '
             f'--frame-stride', key=f'fps:{ref_path}')
    return t


def note_not_applicable(scores, ref_path, shape, scorers, warn):
    """Note each metric this evaluation computes that cannot apply to the clip, shape (T, H, W)."""
    computed = {'lpips': scorers.lpips_model is not None, 'vmaf': scorers.vmaf is not None}
    for key in VIDEO_METRICS:
        why = computed.get(key, True) and not_applicable(key, *shape)
        if why:
            scores.note(warn, f'{ref_path}: {key} n/a: {why}')


def score_pair(scores, method, name, reference, rec_path, settings, scorers, warn):
    """Score one pair into `scores`, or record it as skipped (unreadable) or dropped (its scoring raised),
    warned once per message; metrics that do not apply to the clip are n/a and noted."""
    try:
        ref_u8, rec_u8, recorded = pair_frames(name, reference, rec_path, settings, warn)
    except (VideoReadError, EvalError) as e:
        if str(e) not in scores.skipped:
            scores.skipped.append(str(e))
            warn(f'skipped: {e}')
        return
    t = check_lengths_and_fps(ref_u8, rec_u8, reference.path, rec_path, settings, warn,
                              lambda message: scores.note(warn, message))
    note_not_applicable(scores, reference.path, (t, *ref_u8.shape[1:3]), scorers, warn)
    try:
        per, version = frame_metrics(ref_u8[:t], rec_u8[:t], scorers.lpips_model, scorers.device,
                                     vmaf=scorers.vmaf is not None)
    except Exception as e:  # noqa: BLE001 -- one clip's failure must not lose the others' scores
        first = (str(e).strip().splitlines() or [''])[0]
        scores.dropped.append(f'{rec_path}: scoring failed ({type(e).__name__}: {first})')
        warn(f'dropped: {scores.dropped[-1]}')
        return
    scores.from_done += recorded
    if version:
        scorers.vmaf['libvmaf'] = version
    scores.frames += [{'method': method, 'video': name, 'frame': i, **{k: per[k][i] for k in METRICS}}
                      for i in range(t)]
    scores.videos.append(video_row(method, name, per, ref_u8.shape[1:3], reference.path, rec_path, rec_u8[:t]))
    scores.reference.setdefault(name, (t, temporal_flickering(ref_u8[:t])))
    if scores.features is not None:
        add_features(scores, scorers, method, name, ref_u8, rec_u8[:t], t, warn)


def add_features(scores, scorers, method, name, ref_u8, rec_u8, t, warn):
    """The pair's rFVD clip features; a detector that fails makes rFVD n/a for the evaluation (one line)."""
    try:                               # ReferenceReads keeps one array per plan: its id names the frames read
        scores.features.add(method, name, ref_u8[:t], rec_u8, key=(name, id(ref_u8), t))
    except Exception as e:  # noqa: BLE001 -- the detector is a user's file; the other metrics must survive it
        first = (str(e).strip().splitlines() or [''])[0]
        scorers.fvd_note = f'{scorers.fvd_path}: the rFVD detector failed ({type(e).__name__}: {first}), so rFVD is n/a'
        scores.features = None
        warn(scorers.fvd_note)


def score(matched, settings, scorers, warn):
    """Every matched pair, reference by reference (each reference read once per frame plan) -> Scores;
    raises EvalFailed when no pair could be scored."""
    for m, names in matched.missing.items():
        if names:
            warn(f"{m}: no reconstruction for {len(names)} of {len(matched.refs)} videos ({', '.join(names[:5])}"
                 f"{'...' if len(names) > 5 else ''}); they are left out of its means")
    scores = Scores(features=FeatureSets(scorers.detector) if scorers.detector is not None else None)
    for name, ref_path in tqdm(matched.refs.items(), desc='eval', unit='video', disable=not settings.progress):
        reference = ReferenceReads(ref_path)
        for method, found in matched.methods.items():
            if name in found:
                score_pair(scores, method, name, reference, found[name], settings, scorers, warn)
    if not scores.videos:
        lost = scores.skipped + scores.dropped
        raise EvalFailed(f"--ref/--rec: no pair could be scored ({len(lost)} unreadable or failed; first: "
                         f"{lost[0] if lost else 'nothing matched'})")
    return scores


# ---- write ------------------------------------------------------------------------------------------

def write_outputs(out_dir, frames, videos, summary, setup, notes, extra=None):
    """per_frame.csv, per_video.csv, summary.md, summary.json, per_frame.png (+ bars.png) -> {name: path}.

    out_dir: pathlib.Path. extra: more top-level summary.json keys (protocol, lpips, vmaf, fvd, and the rows
    the tables add: reference, published)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {'per_frame': out_dir / 'per_frame.csv', 'per_video': out_dir / 'per_video.csv',
             'summary': out_dir / 'summary.md', 'summary_json': out_dir / 'summary.json',
             'per_frame_plot': out_dir / 'per_frame.png'}
    write_text_atomic(files['per_frame'], csv_text(PER_FRAME_NOTE, ['method', 'video', 'frame', *METRICS], [
        [r['method'], r['video'], r['frame'], *(fmt(r[k]) for k in METRICS)] for r in frames]))
    write_text_atomic(files['per_video'], csv_text(PER_VIDEO_NOTE, VIDEO_COLUMNS, [
        [fmt(v[c]) if c in METRICS else v[c] for c in VIDEO_COLUMNS] for v in videos]))
    extra = extra or {}
    write_text_atomic(files['summary'], summary_markdown(summary, videos, setup, notes, extra.get('reference'),
                                                         extra.get('published')))
    write_text_atomic(files['summary_json'], summary_json(summary, videos, setup, notes, extra))
    available = available_metrics(videos)
    plot_per_frame(files['per_frame_plot'], frames, available)
    if len(summary) > 1:
        files['bars_plot'] = out_dir / 'bars.png'
        plot_bars(files['bars_plot'], summary, available)
    return files


def write(out_dir, scores, summary, described, settings, log):
    """The evaluation folder (write_outputs), the summary table and the files logged, the report when asked
    for -> {name: path}."""
    setup, notes, extra = described
    files = write_outputs(out_dir, scores.frames, scores.videos, summary, setup, notes, extra)
    log(markdown_table(summary, extra['reference'], extra['published']))  # notes were logged as they arose
    for line in (n for n in notes if n.startswith('rFVD: ')):   # its protocol and clip counts, when it ran
        log(line)
    log(f'wrote {", ".join(str(p) for p in files.values())}')
    if settings.report_dir:
        files['report'] = write_report(settings.report_dir, out_dir, copy_videos=settings.copy_videos)
        log(f"report: {files['report']}")
    return files


def evaluate(ref, rec, out_dir=None, settings=None, log=print, **options):
    """Evaluate reconstructions against references and write the outputs to out_dir; -> a result dict.

    ref: a folder / .txt / .json list / video, or a list of paths. rec: one --rec spec, a list of them, or
    {label: source} (matching.py). out_dir: default the first --rec folder / '.eval'. settings: EvalSettings;
    options: any of its fields by name, e.g. evaluate(refs, 'outputs', device='cpu', vmaf=True, num_frames=8).
    Each pair is compared through recon.py's frame plan from the done.json beside the reconstruction, else
    through the settings' plan; selection and crop apply to the reference only. log: a callable taking one
    line (warnings start with 'warning: ').
    Returns {'methods': {label: {videos, frames, psnr, ssim, lpips, flicker, tof, vmaf, vbench_flicker, counts,
    compression, rfvd, rfvd_clips}} (counts: {metric: videos its mean is over}), 'reference': {videos, frames,
    vbench_flicker, per_video} (the originals' own VBench flicker), 'published': None or the --protocol's
    published rows (published.py), 'fvd': None without fvd, else {detector, protocol, unavailable, clips},
    'lpips': None or why it is missing, 'vmaf': None or {model, libvmaf, ffmpeg_version, ffmpeg}, 'missing':
    {label: [names]}, 'skipped': [messages of unreadable pairs], 'dropped': [messages of pairs whose scoring
    failed], 'notes': [lengths that differ, metrics n/a for a clip], 'files': {name: path}, 'out_dir': Path};
    the scored pairs are written whatever was skipped or dropped. Raises EvalError (one line) for bad input,
    checked before any scoring (the output and report folders too), and EvalFailed when no pair could be
    scored; nothing is written then.
    """
    settings = replace(settings or EvalSettings(), **options)
    warn = Warnings(log)
    matched = match(ref, rec, out_dir, settings.report_dir)
    scorers = load_scorers(warn, settings.device, lpips=settings.lpips, vmaf=settings.vmaf,
                           fvd_detector=settings.fvd_detector if settings.fvd else None)
    scores = score(matched, settings, scorers, warn)
    summary = summarize(scores.videos)
    described = describe(ref, matched, scores, settings, scorers, summary)
    files = write(matched.out_dir, scores, summary, described, settings, log)
    extra = described[2]
    return {'methods': summary, 'reference': extra['reference'], 'published': extra['published'],
            'fvd': extra['fvd'], 'lpips': scorers.lpips_note, 'vmaf': scorers.vmaf, 'missing': matched.missing,
            'skipped': scores.skipped, 'dropped': scores.dropped, 'notes': scores.notes, 'files': files,
            'out_dir': matched.out_dir}
