"""Compare reconstructions with their originals: PSNR, SSIM, LPIPS, flicker, tOF and VMAF per frame, video, method.

    python tools/eval.py --ref VIDEOS --rec OUTPUTS [--vmaf] [--protocol cascadev-inter4k] [--report REPORT_DIR]
    python tools/eval.py --ref VIDEOS --rec FOLDER_OF_MP4S [--square] [--start K --frame-stride S --num-frames N]

--ref is a folder of videos, a .txt/.json list or one video. Each --rec is `[LABEL=]SOURCE`, matched to the
references by video name (file stem):
  * a folder of NAME.mp4 files (any video extension);
  * a recon.py output folder NAME/{rec.mp4, preview.mp4}: gives the methods `refined` and `preview`
    (with LABEL=, only rec.mp4 under that label);
  * a pattern with one `*` standing for the name, e.g. `preview=outputs/*/preview.mp4`.
A reconstruction is compared with its reference through the frame plan that made it (tools/video/frames.py): the
one in the done.json beside a recon.py output, else the one the flags describe (--start, --frame-stride,
--num-frames, --size, --square, --preprocess, as recon.py takes them). Frame selection and cropping apply to
the reference only; a reconstruction is resized only when its size differs from the reference's (with a
warning). Writes per_frame.csv, per_video.csv, summary.md, summary.json, per_frame.png (and bars.png for
several methods) to --out; --report DIR adds an HTML page (tools/report.py).
"""
import argparse
import glob
import json
import math
import os
import re
import sys
from pathlib import Path

if __package__ in (None, ''):  # run as `python tools/eval.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tools.evaluation import metrics
from tools.training.data import DataError, read_video_list
from tools.video.frames import PREPROCESS, FramePlan, plan
from tools.report import write_report
from tools.evaluation.tables import METRICS, EvalError, markdown_table, mean, summarize, write_outputs
from tools.evaluation.tables import read_table  # noqa: F401 (scripts read the CSVs with tools.eval.read_table)
from tools.video.read import VIDEO_EXTS, VideoReadError, frame_indices, list_videos, probe_video, read_video
from tools.video.write import to_uint8

# Named evaluation presets: flag defaults (explicit flags still win) and the source fps the numbers assume.
PROTOCOLS = {
    # The seed's Inter4K-200 table (README "Reproducing the Inter4K-200 protocol"): the original's
    # preprocessing to a 1024 short edge, then the centre square, of 30 fps clips; every frame compared.
    'cascadev-inter4k': {'size': 1024, 'square': True, 'preprocess': 'cascadev', 'frame_stride': 1,
                         'num_frames': None, 'fps': 30},
}
RECON_FILES = {'preview': 'preview.mp4', 'refined': 'rec.mp4'}  # recon.py layout: OUTPUT/<name>/<file>
READ_BUDGET = 1 << 30  # bytes of float32 frames decoded at once (4K clips are read in chunks)

# ---- matching videos by name -----------------------------------------------------------------------

def list_references(ref):
    """--ref (folder, .txt/.json list, one video, or a list of paths) -> {name: path}, names = file stems."""
    if isinstance(ref, (list, tuple)):
        paths = [str(p) for p in ref]
    else:
        if not os.path.exists(ref):
            raise EvalError(f"--ref {ref}: no such file or folder; pass a folder of videos, a .txt/.json list "
                            f"or a video file")
        try:
            paths = read_video_list(ref)
        except (DataError, VideoReadError) as e:
            raise EvalError(f"--ref {ref}: {str(e).split(': ', 1)[-1]}") from None
    if not paths:
        raise EvalError(f"--ref {ref}: lists no videos; add video paths to it")
    refs = {}
    for p in paths:
        name = Path(p).stem
        if name in refs:
            raise EvalError(f"--ref {ref}: two videos are named '{name}' ({refs[name]} and {p}); reconstructions "
                            f"are matched by file name, so rename one")
        refs[name] = p
    return refs


def _pattern_matches(pattern):
    """'outputs/*/rec.mp4' -> {name: path} for each existing file, name = what `*` matched."""
    if pattern.count('*') != 1:
        raise EvalError(f"--rec {pattern}: a pattern needs exactly one '*' (the video name), e.g. outputs/*/rec.mp4")
    head, tail = pattern.split('*')
    rx = re.compile(re.escape(head) + r'(.+)' + re.escape(tail))
    return {rx.fullmatch(p).group(1): p for p in sorted(glob.glob(pattern)) if os.path.isfile(p)}


def _split_label(spec):
    m = re.match(r'^([\w.+-]+)=(.+)$', spec)
    if m and not os.path.exists(spec):
        return m.group(1), m.group(2)
    return None, spec


def _rec_items(rec):
    """--rec value(s) or {label: source} -> [(label or None, source)]."""
    if isinstance(rec, (str, Path)):
        return [_split_label(str(rec))]
    if isinstance(rec, dict):
        return [(str(k), str(v)) for k, v in rec.items()]
    return [_split_label(str(s)) for s in rec]


def resolve_methods(rec):
    """--rec specs -> {label: {name: path}} (see the module docstring for the accepted forms)."""
    items = _rec_items(rec)
    if not items:
        raise EvalError("--rec: no reconstructions given; pass --rec DIR (a recon.py output folder or a folder of "
                        "NAME.mp4 files)")
    methods = {}

    def add(label, found, spec):
        if label in methods:
            raise EvalError(f"--rec {spec}: the method label '{label}' is used twice; name them, e.g. "
                            f"--rec a={spec}")
        methods[label] = found

    for label, spec in items:
        path = Path(spec)
        if '*' in spec:
            found = _pattern_matches(spec)
            if not found:
                raise EvalError(f"--rec {spec}: the pattern matches no files; check the folder and file name")
            named = {f: m for m, f in RECON_FILES.items()}
            add(label or named.get(Path(spec).name, Path(spec).stem), found, spec)
        elif path.is_dir():
            recon = {f: {d.name: str(d / f) for d in sorted(path.iterdir()) if (d / f).is_file()}
                     for f in RECON_FILES.values()}
            if any(recon.values()):
                if label:
                    add(label, recon[RECON_FILES['refined']], spec)
                else:
                    for method, f in RECON_FILES.items():
                        if recon[f]:
                            add(method, recon[f], spec)
            else:
                try:
                    flat = {Path(p).stem: p for p in list_videos(path)}
                except VideoReadError:
                    raise EvalError(f"--rec {spec}: holds neither NAME.mp4 videos nor recon outputs NAME/rec.mp4; "
                                    f"pass the folder recon.py wrote or a folder of videos") from None
                add(label or path.resolve().name, flat, spec)
        elif path.is_file() and path.suffix.lower() in VIDEO_EXTS:
            add(label or path.parent.resolve().name, {path.stem: str(path)}, spec)
        else:
            raise EvalError(f"--rec {spec}: no such folder or video; pass a recon.py output folder, a folder of "
                            f"NAME.mp4 files or a pattern like outputs/*/rec.mp4")
    return methods


def default_out_dir(rec):
    """The first --rec source's folder / 'eval' (for a pattern: the folder before the '*')."""
    spec = _rec_items(rec)[0][1]
    if '*' in spec:
        head = spec.split('*')[0]
        folder = head if head.endswith(('/', os.sep)) else os.path.dirname(head)
    else:
        folder = spec if os.path.isdir(spec) else os.path.dirname(spec)
    return Path(folder or '.') / 'eval'


# ---- loading clips through the frame plan ------------------------------------------------------------

def recon_plan(rec_path, name):
    """The FramePlan recon.py made `rec_path` with (the done.json beside it), or None when there is none."""
    done = Path(rec_path).parent / 'done.json'
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_text())
        if record.get('name') != name or 'plan' not in record:
            return None                                   # another video's record, or no plan in it
        return FramePlan.from_dict(record['plan'])
    except (ValueError, TypeError, AttributeError) as e:
        raise EvalError(f"{done}: unreadable recon record ({e}); rerun recon.py for '{name}' or remove "
                        f"the file to compare through the flags") from None


def flag_plan(ref_path, size=0, square=False, preprocess='default', start=0, stride=1, num_frames=None):
    """The FramePlan the eval flags describe for this reference (recon.py's flags, same meaning)."""
    info = probe_video(ref_path)
    available = max(0, math.ceil((info.num_frames - start) / stride))
    if num_frames and available:
        num_frames = min(num_frames, available)          # "at most N"; too short a clip is reported on reading
    try:
        return plan(info.height, info.width, size=size or 0, square=square, preprocess=preprocess, start=start,
                    stride=stride, num_frames=num_frames)
    except ValueError as e:
        raise EvalError(f'{ref_path}: {e}') from None


def load_frames(path, frame_plan=None, num_frames=None):
    """A video as uint8 frames (T, H, W, 3), decoded in chunks so 4K clips never sit in memory as float.

    With a FramePlan (a reference): source frames start, start + stride, ... (the plan's num_frames of them,
    else `num_frames`, else all) through FramePlan.reference, i.e. exactly what recon.py's outputs show.
    Without (a reconstruction): its first `num_frames` frames (all if None), as stored.
    """
    info = probe_video(path)
    if frame_plan is not None and (info.height, info.width) != tuple(frame_plan.source):
        raise EvalError(f"{path}: is {info.height}x{info.width} but the reconstruction's frame plan is for a "
                        f"{frame_plan.source[0]}x{frame_plan.source[1]} source; pass the video recon.py read")
    p = frame_plan or FramePlan(source=(info.height, info.width))
    want = p.num_frames or num_frames
    if frame_plan is None and want:
        want = min(want, info.num_frames)
    indices = frame_indices(info.num_frames, want, p.stride, p.start, path)   # VideoReadError if too short
    per_chunk = max(1, READ_BUDGET // (3 * 4 * info.height * info.width))
    parts = []
    for i in range(0, len(indices), per_chunk):
        n = min(per_chunk, len(indices) - i)
        video, _ = read_video(path, num_frames=n, stride=p.stride, start=indices[i])
        parts.append(to_uint8(p.reference(video) if frame_plan is not None else video))
    return np.concatenate(parts)


def match_size(rec, ref_shape, path, warn):
    """Rec uint8 frames as they are when their (H, W) is the reference's; else resized to it (same aspect
    ratio only), warning once."""
    (h, w), (rh, rw) = ref_shape, rec.shape[1:3]
    if (rh, rw) == (h, w):
        return rec
    if abs(rh / rw - h / w) > 0.02:
        raise EvalError(f"{path}: is {rh}x{rw} but its reference is {h}x{w} (another aspect ratio); pass the "
                        f"--square / --preprocess / --size that recon.py used so both show the same frame")
    warn(f"{path}: {rh}x{rw} resized to the reference's {h}x{w} (the reconstruction has another size)")
    x = torch.from_numpy(rec).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ---- evaluation -------------------------------------------------------------------------------------

def pick_device(device):
    if device in (None, 'auto'):
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


def frame_metrics(ref, rec, lpips_model=None, device='cpu', vmaf=False):
    """Two uint8 clips (T, H, W, 3) -> ({metric: [T values]}, libvmaf version or None).

    flicker[0] and tof[0] are None (no previous frame); LPIPS without a model and VMAF without `vmaf` are None."""
    t = len(ref)
    per = {'psnr': metrics.psnr(ref, rec, device=device).tolist(),
           'ssim': metrics.ssim(ref, rec, device=device).tolist(),
           'lpips': (metrics.lpips_distance(lpips_model, ref, rec, device=device).tolist()
                     if lpips_model is not None else [None] * t),
           'flicker': [None] + metrics.flicker(ref, rec, device=device).tolist(),
           'tof': [None] + metrics.tof(ref, rec).tolist(),
           'vmaf': [None] * t}
    version = None
    if vmaf:
        scores, version = metrics.vmaf(ref, rec)
        per['vmaf'] = scores.tolist()
    return per, version


def video_row(method, name, per, shape, ref_path, rec_path):
    """One per_video.csv row from frame_metrics output."""
    return {'method': method, 'video': name, 'frames': len(per['psnr']), 'height': shape[0], 'width': shape[1],
            'psnr': metrics.mean_psnr(per['psnr']), 'psnr_inf_frames': sum(math.isinf(v) for v in per['psnr']),
            'ssim': mean(per['ssim']), 'lpips': mean(per['lpips']), 'flicker': mean(per['flicker'][1:]),
            'tof': mean(per['tof'][1:]), 'vmaf': mean(per['vmaf']),
            'ref': str(Path(ref_path).resolve()), 'rec': str(Path(rec_path).resolve())}


def describe_setup(ref, refs, videos, size, square, num_frames, stride, protocol=None):
    """One line: which references, at which size, how many frames (and the --protocol preset)."""
    source = f'{len(ref)} files' if isinstance(ref, (list, tuple)) else str(ref)
    sizes = ', '.join(sorted({f"{v['height']}x{v['width']}" for v in videos}))
    flags = [f'--protocol {protocol}'] if protocol else []
    if size:
        flags.append(f'--size {size}' + (' --square' if square else ''))
    if num_frames:
        flags.append(f'--num-frames {num_frames}')
    if stride > 1:
        flags.append(f'--frame-stride {stride}')
    return f"References: {source} ({len(refs)} videos); compared at {sizes}" + (
        f" ({' '.join(flags)})." if flags else '.')


def evaluate(ref, rec, out_dir=None, size=None, num_frames=None, lpips=True, square=False, stride=1,
             device='auto', report_dir=None, copy_videos=False, progress=True, log=print, start=0,
             preprocess='default', vmaf=False, protocol=None):
    """Evaluate reconstructions against references and write the CSV/Markdown/JSON/PNG outputs to out_dir.

    ref: folder / .txt / .json / video, or a list of paths. rec: one --rec spec, a list of them, or
    {label: source}. Each pair is compared through recon.py's frame plan from the done.json beside the
    reconstruction, else through the plan of size / square / preprocess / start / stride / num_frames
    (recon.py's flags, tools/video/frames.py); selection and crop apply to the reference only.
    vmaf: also run libvmaf (raises EvalError when ffmpeg lacks it). protocol: a PROTOCOLS name, recorded in
    the outputs (its settings are the caller's other arguments; see parse_args).
    Returns {'methods': {label: {videos, frames, psnr, ssim, lpips, flicker, tof, vmaf}},
    'lpips': None or why it is missing, 'vmaf': None or {model, libvmaf, ffmpeg_version, ffmpeg},
    'missing': {label: [names]}, 'skipped': [messages], 'files': {name: path}, 'out_dir': Path}.
    """
    refs = list_references(ref)
    methods = resolve_methods(rec)
    out_dir = Path(out_dir) if out_dir else default_out_dir(rec)
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalError(f"--out {out_dir}: is a file; pass a folder for the evaluation outputs")
    missing = {m: sorted(set(refs) - set(found)) for m, found in methods.items()}
    if not any(set(refs) & set(found) for found in methods.values()):
        some = next(iter(methods.values()))
        raise EvalError(f"--rec: no reconstruction matches a --ref video by name (references: "
                        f"{', '.join(list(refs)[:3])}...; reconstructions: {', '.join(list(some)[:3]) or 'none'}); "
                        f"reconstructions must be named like their originals")
    vmaf_info = None
    if vmaf:
        try:
            vmaf_info = metrics.vmaf_check()
        except metrics.VMAFUnavailable as e:
            raise EvalError(f'--vmaf: {e}') from None
    expect_fps = PROTOCOLS[protocol]['fps'] if protocol else None
    device = pick_device(device)
    warned = set()

    def warn(msg, key=None):
        if (key or msg) not in warned:
            warned.add(key or msg)
            log(f'warning: {msg}')

    lpips_model, lpips_note = None, None if lpips else 'LPIPS disabled (--no-lpips)'
    if lpips:
        try:
            lpips_model = metrics.load_lpips(device)
        except metrics.LPIPSUnavailable as e:
            lpips_note = str(e)
            warn(lpips_note)
    for m, names in missing.items():
        if names:
            warn(f"{m}: no reconstruction for {len(names)} of {len(refs)} videos ({', '.join(names[:5])}"
                 f"{'...' if len(names) > 5 else ''}); they are left out of its means")

    flags = dict(size=size, square=square, preprocess=preprocess, start=start, stride=stride, num_frames=num_frames)
    flags_given = bool(size or square or preprocess != 'default' or start or stride != 1 or num_frames)
    frames, videos, skipped, from_done = [], [], [], 0
    for name, ref_path in tqdm(refs.items(), desc='eval', unit='video', disable=not progress):
        references = {}                                   # one read of the reference per distinct plan

        def reference(rec_path):
            recorded = recon_plan(rec_path, name)
            if recorded is not None and flags_given:
                warn(f'{rec_path}: compared through the frame plan in its done.json (recon.py\'s flags); '
                     f'--size/--square/--preprocess/--start/--frame-stride/--num-frames apply only to '
                     f'reconstructions without one', key='plan-over-flags')
            p = recorded or flag_plan(ref_path, **flags)
            key = json.dumps(p.to_dict(), sort_keys=True)
            if key not in references:
                try:
                    references[key] = load_frames(ref_path, p)
                except (VideoReadError, EvalError) as e:
                    references[key] = e
            if isinstance(references[key], Exception):
                raise references[key]
            return references[key], recorded is not None

        for m, rec_path in ((m, found[name]) for m, found in methods.items() if name in found):
            try:
                ref_u8, recorded = reference(rec_path)
                rec_u8 = load_frames(rec_path, num_frames=len(ref_u8))
                rec_u8 = match_size(rec_u8, ref_u8.shape[1:3], rec_path, lambda s: warn(s, key='resize'))
            except (VideoReadError, EvalError) as e:
                if str(e) not in skipped:
                    skipped.append(str(e))
                    warn(f'skipped: {e}')
                continue
            from_done += recorded
            t = min(len(ref_u8), len(rec_u8))
            if len(ref_u8) != len(rec_u8):
                warn(f'{rec_path}: {len(rec_u8)} frames vs {len(ref_u8)} in {ref_path}; the first {t} are compared',
                     key=f'frames:{rec_path}')
            if expect_fps and abs(probe_video(ref_path).fps / stride - expect_fps) > 0.5:
                warn(f'{ref_path}: {probe_video(ref_path).fps:g} fps with --frame-stride {stride}, but --protocol '
                     f'{protocol} assumes {expect_fps} fps clips; use a {expect_fps} fps copy or a matching '
                     f'--frame-stride', key=f'fps:{ref_path}')
            per, version = frame_metrics(ref_u8[:t], rec_u8[:t], lpips_model, device, vmaf=vmaf_info is not None)
            if version:
                vmaf_info['libvmaf'] = version
            frames += [{'method': m, 'video': name, 'frame': i, **{k: per[k][i] for k in METRICS}} for i in range(t)]
            videos.append(video_row(m, name, per, ref_u8.shape[1:3], ref_path, rec_path))
    if not videos:
        raise EvalError(f"--ref/--rec: no pair could be read ({skipped[0] if skipped else 'nothing matched'})")

    summary = summarize(videos)
    notes = [lpips_note] if lpips_note else []
    notes += [f'{m}: no reconstruction for {", ".join(n)}' for m, n in missing.items() if n]
    notes += [f'skipped (unreadable): {s}' for s in skipped]
    if from_done:
        notes.append(f"{from_done} of {len(videos)} pairs compared through recon.py's frame plan (done.json)")
    if start or preprocess != 'default':
        notes.append(f'flags: --start {start} --preprocess {preprocess}')
    if vmaf_info:
        notes.append(f"VMAF: libvmaf {vmaf_info.get('libvmaf', '?')}, model {vmaf_info['model']}, "
                     f"ffmpeg {vmaf_info['ffmpeg_version']}")
    else:
        notes.append('VMAF not computed (pass --vmaf)')
    setup = describe_setup(ref, refs, videos, size, square, num_frames, stride, protocol)
    extra = {'protocol': protocol, 'lpips': lpips_note,
             'vmaf': {k: v for k, v in vmaf_info.items() if k != 'ffmpeg'} if vmaf_info else None}
    files = write_outputs(out_dir, frames, videos, summary, setup, notes, extra)
    log(markdown_table(summary))  # the notes were logged as warnings when they arose
    log(f'wrote {", ".join(str(p) for p in files.values())}')
    if report_dir:
        files['report'] = write_report(report_dir, out_dir, copy_videos=copy_videos)
        log(f"report: {files['report']}")
    return {'methods': summary, 'lpips': lpips_note, 'vmaf': vmaf_info, 'missing': missing, 'skipped': skipped,
            'files': files, 'out_dir': out_dir}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ref', required=True, help='original videos: folder, .txt/.json list or one video')
    p.add_argument('--rec', action='append', required=True, metavar='[LABEL=]SOURCE',
                   help='reconstructions (repeatable): recon.py output folder, folder of NAME.mp4, or '
                        'a pattern like preview=outputs/*/preview.mp4')
    p.add_argument('--out', default=None, help='output folder (default: first --rec folder/eval)')
    g = p.add_argument_group('frame plan of reconstructions without a done.json (recon.py\'s flags, same meaning; '
                             'applied to the reference only)')
    g.add_argument('--start', type=int, default=0, help='first reference frame (default 0)')
    g.add_argument('--frame-stride', type=int, default=1, help='every S-th reference frame (default 1)')
    g.add_argument('--num-frames', type=int, default=None, help='compare N frames (default: all)')
    g.add_argument('--square', action='store_true', help='the reference\'s central square (recon.py --square)')
    g.add_argument('--preprocess', choices=PREPROCESS, default='default',
                   help="cascadev: the reference through the original's preprocessing (recon.py --preprocess)")
    g.add_argument('--size', type=int, default=None,
                   help='the --size recon.py used; only --preprocess cascadev depends on it (default 0: native)')
    p.add_argument('--no-lpips', action='store_true', help='skip LPIPS')
    p.add_argument('--vmaf', action='store_true',
                   help="also compute VMAF (libvmaf, model vmaf_v0.6.1, in imageio-ffmpeg's ffmpeg)")
    p.add_argument('--protocol', choices=sorted(PROTOCOLS), default=None,
                   help='a named preset of the frame flags (explicit flags still win): cascadev-inter4k = '
                        '--size 1024 --square, 30 fps clips, all frames (the README says what is known)')
    p.add_argument('--device', default='auto', help='auto | cpu | cuda[:i]')
    p.add_argument('--report', default=None, metavar='DIR', help='also write an HTML report to DIR')
    p.add_argument('--copy-videos', action='store_true', help='with --report: copy the clips next to the page')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    preset = p.parse_known_args(argv)[0].protocol
    if preset:
        p.set_defaults(**{k: v for k, v in PROTOCOLS[preset].items() if k != 'fps'})
    args = p.parse_args(argv)
    if args.size is not None and args.size < 0:
        p.error(f'--size {args.size}: must be >= 0 pixels (0: native size)')
    if args.preprocess == 'cascadev' and args.size is None:
        p.error("--preprocess cascadev needs --size (the short edge recon.py used, e.g. the config's sample_size)")
    if args.start < 0:
        p.error(f'--start {args.start}: must be >= 0')
    if args.num_frames is not None and args.num_frames < 1:
        p.error(f'--num-frames {args.num_frames}: must be >= 1 (or left out for all frames)')
    if args.frame_stride < 1:
        p.error(f'--frame-stride {args.frame_stride}: must be >= 1')
    if args.copy_videos and not args.report:
        p.error('--copy-videos needs --report DIR (the folder the clips are copied to)')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        result = evaluate(args.ref, args.rec, args.out, size=args.size, num_frames=args.num_frames,
                          lpips=not args.no_lpips, square=args.square, stride=args.frame_stride,
                          start=args.start, preprocess=args.preprocess,
                          device=args.device, report_dir=args.report, copy_videos=args.copy_videos,
                          progress=not args.quiet, vmaf=args.vmaf, protocol=args.protocol,
                          log=lambda s: print(s, file=sys.stderr if s.startswith('warning') else sys.stdout))
    except EvalError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if result['skipped']:
        print(f"error: {len(result['skipped'])} video(s) could not be read; see {result['files']['summary']}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
