"""Compare reconstructions with their originals: PSNR, SSIM, LPIPS, flicker, tOF and VMAF per frame, video, method;
VBench flicker per video and method (and of the originals); rFVD per method with --fvd.

    python tools/eval.py --ref VIDEOS --rec OUTPUTS [--vmaf] [--fvd] [--protocol cascadev-inter4k] [--report DIR]
    python tools/eval.py --ref VIDEOS --rec FOLDER_OF_MP4S [--square] [--start K --frame-stride S --num-frames N]

--ref is a folder of videos, a .txt/.json list or one video. Each --rec is `[LABEL=]SOURCE`, matched to the
references by video name (file stem):
  * a folder of NAME.mp4 files (any video extension);
  * a recon.py output folder NAME/{rec.mp4, preview.mp4}: gives the methods `refined` and `preview`
    (with LABEL=, only rec.mp4 under that label); a recon.py --autoencoder NAME folder gives the method NAME;
  * a pattern with one `*` standing for the name, e.g. `preview=outputs/*/preview.mp4`.
A reconstruction is compared with its reference through the frame plan that made it (tools/video/frames.py): the
one in the done.json beside a recon.py output, else the one the flags describe (--start, --frame-stride,
--num-frames, --size, --square, --preprocess, as recon.py takes them). Frame selection and cropping apply to
the reference only; a reconstruction is resized only when its size differs from the reference's (with a
warning). Writes per_frame.csv, per_video.csv, summary.md, summary.json, per_frame.png (and bars.png for
several methods) to --out (default: FIRST_REC/.eval, a name no video can have); --report DIR adds an HTML page
(tools/report.py). The summary table is the paper's: model, compression (from each done.json), the metrics;
--protocol cascadev-inter4k adds the release's published rows, marked as such. A metric that cannot apply to
a clip (too small, or one frame for flicker/tOF) is n/a for it, with a note; the means say over how many
videos they run. --fvd without a detector file: rFVD is n/a with one line, every other number unchanged.

Exit codes: 0 every pair scored; 1 some pair unreadable or its scoring failed (the others are written, the
summary names them) or none could be scored; 2 bad input (flags, paths, --device, unwritable --out/--report),
one line, before any work, nothing written.
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ''):  # run as `python tools/eval.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.evaluation.evaluate import PROTOCOLS, EvalError, EvalFailed, EvalSettings, evaluate
from tools.evaluation.fvd import DETECTOR_FILE
from tools.video.frames import PREPROCESS


def parse_args(argv=None):
    """The flags -> an argparse Namespace; a --protocol preset sets the frame flags' defaults; bad values exit 2."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ref', required=True, help='original videos: folder, .txt/.json list or one video')
    p.add_argument('--rec', action='append', required=True, metavar='[LABEL=]SOURCE',
                   help='reconstructions (repeatable): recon.py output folder, folder of NAME.mp4, or '
                        'a pattern like preview=outputs/*/preview.mp4')
    p.add_argument('--out', default=None, help='output folder (default: first --rec folder/.eval)')
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
    p.add_argument('--fvd', action='store_true',
                   help='also compute rFVD per method (I3D features of 16-frame clips; needs --fvd-detector)')
    p.add_argument('--fvd-detector', default=DETECTOR_FILE, metavar='PATH',
                   help=f'the StyleGAN-V I3D TorchScript file for --fvd (default {DETECTOR_FILE}; missing: rFVD '
                        f'is n/a with one line)')
    p.add_argument('--protocol', choices=sorted(PROTOCOLS), default=None,
                   help='a named preset of the frame flags (explicit flags still win): cascadev-inter4k = '
                        '--preprocess cascadev --size 1024 --square, 30 fps clips, all frames; the summary then '
                        'also lists the release\'s published numbers, marked as published (with a note when '
                        'the pairs were not compared at 1024x1024)')
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
    if args.fvd_detector != DETECTOR_FILE and not args.fvd:
        p.error('--fvd-detector needs --fvd (rFVD is computed only when asked for)')
    return args


def settings_from_args(args):
    """The EvalSettings the parsed flags describe."""
    return EvalSettings(size=args.size, square=args.square, preprocess=args.preprocess, start=args.start,
                        stride=args.frame_stride, num_frames=args.num_frames, lpips=not args.no_lpips,
                        vmaf=args.vmaf, device=args.device, protocol=args.protocol, report_dir=args.report,
                        copy_videos=args.copy_videos, progress=not args.quiet, fvd=args.fvd,
                        fvd_detector=args.fvd_detector)


def log(line):
    """Warnings to stderr, everything else to stdout."""
    print(line, file=sys.stderr if line.startswith('warning') else sys.stdout)


def main(argv=None):
    """-> 0; 2 for bad input (one line, nothing written); 1 when some pair could not be read or scored (the
    others are written) or none could."""
    args = parse_args(argv)
    try:
        result = evaluate(args.ref, args.rec, args.out, settings_from_args(args), log=log)
    except EvalFailed as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except EvalError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    lost = len(result['skipped']) + len(result['dropped'])
    if lost:
        print(f"error: {lost} pair(s) could not be read or scored ({len(result['skipped'])} unreadable, "
              f"{len(result['dropped'])} failed); the others are in {result['files']['summary']}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
