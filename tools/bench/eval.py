"""`eval`: tools/eval.py's scoring, metric by metric, against recon's per-frame time on the same frames.

One run reconstructs a clip through recon.py's loop (tools/bench/recon.run_recon), then scores its rec.mp4
against the reference through the frame plan recon used (tools/eval.py's flag plan for the same --size and
--frames), with the function tools/eval.py scores every pair with (tools.evaluation.scoring.metric_values),
so both are timed on the same frames, side by side. CPU
time (user, system) comes from resource.getrusage: the process's threads, and for VMAF also ffmpeg's.
"""
import resource
import tempfile
import time
from pathlib import Path

from tools.bench.measure import (add_config_args, add_run_args, environment, load_cfg, print_table, setup_device,
                                 write_json)
from tools.bench.recon import _input_video, add_clip_args, build_pipeline, run_recon
from models.weights import DTYPES
from tools.evaluation.clips import flag_plan, load_frames, match_size
from tools.evaluation.scoring import load_scorers, metric_values, not_applicable

CORE = ('psnr', 'ssim', 'flicker', 'tof')      # what the goal counts (LPIPS and VMAF are optional models)
GOAL = dict(ratio_max=0.25, sys_fraction_max=0.10)   # eval ≤ 1/4 of recon per frame; system ≤ 10 % of user time


def cpu_times():
    """(user, system) seconds of this process and of its finished children so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def timed(fn, repeats=1):
    """Run fn `repeats` times -> (its last result, fastest wall seconds, user s, system s per run)."""
    user0, sys0 = cpu_times()
    best, out = float('inf'), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    user1, sys1 = cpu_times()
    return out, best, (user1 - user0) / repeats, (sys1 - sys0) / repeats


def time_metrics(ref, rec, keys, scorers, repeats):
    """{metric: {seconds, per_frame_s, user_s, sys_s}} of metric_values on the clips (T, H, W, 3) uint8;
    a metric that does not apply to them, or whose model is absent, is {'skipped': why}."""
    t, h, w = ref.shape[:3]
    rows = {}
    for key in keys:
        why = not_applicable(key, t, h, w) or (scorers.lpips_note if key == 'lpips' else None)
        if why:
            rows[key] = dict(skipped=why)
            continue
        _, seconds, user, system = timed(lambda: metric_values(key, ref, rec, scorers.lpips_model, scorers.device),
                                         repeats)
        rows[key] = dict(seconds=seconds, per_frame_s=seconds / t, user_s=user, sys_s=system)
    return rows


def recon_and_frames(args, cfg, device, tmp):
    """Warm-up runs, one timed reconstruction -> (recon entry, reference frames, reconstructed frames)."""
    size = args.size or cfg.data.sample_size
    frames = args.frames or cfg.data.num_frames_per_video
    path = _input_video(args, tmp, frames, size, args.width or size)
    pipe = build_pipeline(cfg, device, args.dtype or cfg.get('dtype', 'auto'))
    out_dir = Path(tmp) / 'out'
    kw = dict(size=size if args.input else 0, frames=frames, steps=args.steps or cfg.sampling.steps,
              chunk_frames=args.chunk_frames, metrics=not args.no_metrics)
    for _ in range(args.warmup):
        run_recon(pipe, path, out_dir, **kw)
    (_, _, info), seconds, user, system = timed(lambda: run_recon(pipe, path, out_dir, **kw))
    ref = load_frames(path, flag_plan(path, size=kw['size'], num_frames=frames))
    rec = load_frames(out_dir / 'rec.mp4', num_frames=len(ref))
    rec = match_size(rec, ref.shape[1:3], out_dir / 'rec.mp4', lambda message: None)
    n = info['frames']
    return dict(frames=n, seconds=seconds, per_frame_s=seconds / n, user_s=user, sys_s=system), ref, rec


def bench_eval(args):
    """tools/eval.py's scoring per metric (seconds per frame, user and system CPU time) against recon's
    per-frame time on the same frames, and the ratio (goal: PSNR + SSIM + flicker + tOF at most a quarter of
    recon's time per frame, system time under a tenth of user time)."""
    cfg = load_cfg(args, random_init=args.random_init)
    device = setup_device(args)
    if args.input and not Path(args.input).is_file():
        raise ValueError(f'--input {args.input}: no such file; pass a video file, or no --input for a synthetic clip')
    scorers = load_scorers(lambda message: None, device, lpips=args.lpips, vmaf=args.vmaf)
    with tempfile.TemporaryDirectory() as tmp:
        recon, ref, rec = recon_and_frames(args, cfg, device, tmp)
    keys = CORE + (('lpips',) if args.lpips else ()) + (('vmaf',) if args.vmaf else ())
    rows = time_metrics(ref, rec, keys, scorers, args.repeats)
    core = [rows[k] for k in CORE if 'seconds' in rows[k]]
    per_frame = sum(r['per_frame_s'] for r in core)
    user, system = sum(r['user_s'] for r in core), sum(r['sys_s'] for r in core)
    record = dict(benchmark='eval', config=cfg.config_path, cfg_options=args.cfg_options, input=args.input or 'synthetic',
                  frames=len(ref), height=ref.shape[1], width=ref.shape[2], device=str(device), env=environment(device),
                  repeats=args.repeats, warmup=args.warmup, recon=recon, metrics=rows, core=list(CORE),
                  eval_per_frame_s=per_frame, eval_user_s=user, eval_sys_s=system,
                  ratio=per_frame / recon['per_frame_s'], sys_fraction=system / user if user else None, goal=GOAL)
    print_eval(record)
    write_json(args.json, record)
    return record


def print_eval(record):
    """The per-metric table and the comparison lines of one record."""
    r = record['recon']
    print(f"eval: {record['config']}, {record['input']}, {record['frames']}x{record['height']}x{record['width']}, "
          f"{record['device']}, {record['env']['threads']} threads; recon {r['per_frame_s']:.4g} s per frame "
          f"(user {r['user_s']:.3g} s, system {r['sys_s']:.3g} s for {r['frames']} frames)")
    rows = [dict(metric=k, **v, recon_share=v['per_frame_s'] / r['per_frame_s'] if 'per_frame_s' in v else None)
            for k, v in record['metrics'].items()]
    print_table(rows, ['metric', 'per_frame_s', 'seconds', 'user_s', 'sys_s', 'recon_share', 'skipped'])
    frac = record['sys_fraction']
    print(f"{' + '.join(record['core'])}: {record['eval_per_frame_s']:.4g} s per frame = {record['ratio']:.3g}x "
          f"recon's (goal <= {GOAL['ratio_max']}); system time {'-' if frac is None else f'{frac:.1%}'} of user "
          f"(goal < {GOAL['sys_fraction_max']:.0%})")


def add_eval_parser(subparsers):
    p = subparsers.add_parser('eval', help="tools/eval.py's scoring per metric vs recon's time per frame",
                              description=bench_eval.__doc__)
    add_config_args(p)
    add_clip_args(p)
    p.add_argument('--dtype', choices=['auto', *DTYPES], default=None, help="recon's dtype (default: the config's)")
    p.add_argument('--chunk-frames', type=int, default=16, help='frames read/decoded/written at a time')
    p.add_argument('--no-metrics', action='store_true', help="recon without its in-loop PSNR/SSIM")
    p.add_argument('--lpips', action='store_true', help='also time LPIPS (when its weights are present)')
    p.add_argument('--vmaf', action='store_true', help='also time VMAF (libvmaf in ffmpeg)')
    p.add_argument('--warmup', type=int, default=1, help='untimed reconstructions first (default 1)')
    p.add_argument('--repeats', type=int, default=3, help='timed runs of each metric, the fastest kept (default 3); '
                   'recon is timed once')
    add_run_args(p)
    p.set_defaults(func=bench_eval)
