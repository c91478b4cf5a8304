"""`recon`: the streamed reconstruction end to end through CascadeV, timed per stage and per DiT sampler step."""
import tempfile
import time
from pathlib import Path

import torch

from diffusion.samplers import SAMPLERS
from models.pipeline import CascadeV
from models.weights import DTYPES, STAGES, resolve_dtype
from tools.bench.flops import recon_flops
from tools.bench.measure import (TARGET, StageTimer, StepTimer, add_config_args, add_run_args, bf16_peak_tflops,
                                 current_memory_mib, environment, fmt, load_cfg, memory_kind, print_table,
                                 setup_device, synthetic_video, write_json)
from tools.bench.split import bench_processes, join_launch, launched, split_record
from tools.recon.reconstruct import ReconSettings, reconstruct, reconstruct_share
from tools.video.read import probe_video
from tools.video.write import write_video


def build_pipeline(cfg, device, dtype, compile=False, compile_mode=None, stages=None, channels_last=None):
    """CascadeV.from_config with torch.compile of the DiT (in `compile_mode`) and the conv-stage memory layout."""
    return CascadeV.from_config(cfg, device=device, dtype=dtype, compile=(compile_mode or True) if compile else False,
                                stages=stages or STAGES, channels_last=channels_last)


class StepTimedPipeline:
    """The pipeline `pipe` as the library sees it, its refine timed per sampler step by `step_timer` through
    refine's public per-step callback; every other attribute and method is pipe's own."""

    def __init__(self, pipe, step_timer):
        self.pipe, self.step_timer = pipe, step_timer

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def refine(self, *args, **kwargs):
        self.step_timer.start()
        before = self.pipe.split.bytes_gathered
        z = self.pipe.refine(*args, callback=self.step_timer.step, **kwargs)
        self.dit_gathered_bytes = self.pipe.split.bytes_gathered - before
        return z


STAGE_ORDER = ['read', 'compressor', 'dit', 'previewer', 'vae', 'write', 'metrics']


def run_recon(pipe, path, out_dir, size=0, frames=None, steps=8, scheduler='EulerA', seed=42, chunk_frames=16,
              overlap=True, metrics=True):
    """One reconstruction of `path` by the library function recon.py runs (tools/recon/reconstruct.reconstruct),
    timed through its stage hooks and the sampler's per-step callback; -> (stages, step seconds, info).

    Stages: read, compressor, dit (the whole refine; its sampler steps in the step seconds, the first from the
    start of refine: the noise draw and conditioning included), previewer, vae (the SVD decode stream), write,
    metrics (in-loop PSNR/SSIM; metrics=False skips them as --no-metrics). overlap: as recon.py, the next chunk
    is read and the last one written in background threads, so 'read' and 'write' count only the time the model
    work waited for them (False: serial, for a side-by-side ratio). Under a launch (pipe.split of several
    processes, models/parallel.py) the video is shared as recon.py shares it: the main process returns the
    results with the bytes it gathered (per video, and in the DiT), the others their share's None.
    """
    device = pipe.device
    timer, steps_timer = StageTimer(device), StepTimer(device)
    available = probe_video(path).num_frames
    settings = ReconSettings(num_frames=min(frames, available) if frames else None, size=size, steps=steps,
                             scheduler=scheduler, seed=seed)
    if not pipe.split.main:
        reconstruct_share(pipe, video=path, settings=settings, chunk_frames=chunk_frames)
        pipe.split.finish()
        return None
    base, gathered = current_memory_mib(device), pipe.split.bytes_gathered
    start = time.perf_counter()
    timed = StepTimedPipeline(pipe, steps_timer)
    info = reconstruct(timed, out_dir, video=path, settings=settings, chunk_frames=chunk_frames, metrics=metrics,
                       timer=timer, threads=overlap, warn=lambda message: None)
    pipe.split.finish()
    total = time.perf_counter() - start
    stages = [timer.stages[k] for k in STAGE_ORDER if k in timer.stages]
    peaks = [s['peak_mib'] for s in stages if s['peak_mib'] is not None]
    model = info['meta']['plan']['model']
    return stages, steps_timer.seconds(), dict(
        frames=info['frames'], model_size=list(model), latent=[info['frames'], model[0] // 32, model[1] // 32],
        end_to_end_s=total, base_mib=base, peak_mib=max(peaks) if peaks else None,
        gathered_bytes=pipe.split.bytes_gathered - gathered, dit_gathered_bytes=timed.dit_gathered_bytes)


def _input_video(args, tmp, frames, height, width):
    """--input, or a synthetic clip written to tmp (not timed) so that 'read' decodes a real mp4."""
    if args.input:
        return args.input
    path = Path(tmp) / 'synthetic.mp4'
    write_video(path, synthetic_video(frames, height, width), fps=24)
    return str(path)


def bench_recon(args):
    """End to end per stage through recon.py's loop: read, compressor, DiT per sampler step, previewer, SVD
    decode (vae), write, in-loop metrics."""
    if args.processes > 1 and not launched():
        return bench_processes(args)                  # the reference and the split, side by side
    cfg = load_cfg(args, random_init=args.random_init)
    device, split = join_launch(setup_device(args))
    run = dict(dtype=args.dtype or cfg.get('dtype', 'auto'), steps=args.steps or cfg.sampling.steps,
               scheduler=args.scheduler or cfg.sampling.scheduler, height=args.size or cfg.data.sample_size,
               frames=args.frames or cfg.data.num_frames_per_video)
    run['width'] = args.width or run['height']
    if args.input and not Path(args.input).is_file():
        raise ValueError(f'--input {args.input}: no such file; pass a video file, or no --input for a synthetic clip')
    load_s, runs = timed_runs(args, cfg, device, run, split)
    if not split.main:                                # its share was timed by the main process
        return None
    overlaps = list(runs)
    best = {v: min(r, key=lambda one: one[2]['end_to_end_s']) for v, r in runs.items()}
    stages, step_s, info = best[overlaps[-1]]
    T, h, w = info['latent']
    flops = recon_flops(cfg, T, info['model_size'][0], info['model_size'][1], run['steps'])
    total = info['end_to_end_s']
    for s in stages:
        s['share'] = s['seconds'] / total
    peak_tflops = bf16_peak_tflops(device, args.peak_tflops)
    dit = dit_summary(flops, stages, step_s, peak_tflops)
    record = dict(benchmark='recon', config=cfg.config_path, cfg_options=args.cfg_options,
                  random_init=bool(cfg.get('random_init', False)), input=args.input or 'synthetic',
                  frames=info['frames'], height=run['height'], width=run['width'], model_size=info['model_size'],
                  latent=[T, 4 * h, 4 * w], dit_latent=flops['latent'], steps=run['steps'],
                  scheduler=run['scheduler'], device=str(device),
                  dtype=str(resolve_dtype(run['dtype'], device)).replace('torch.', ''),
                  fp32_attention=bool(cfg.model.get('fp32_attention', False)), compile=bool(args.compile),
                  compile_mode=args.compile_mode, warmup=args.warmup, chunk_frames=args.chunk_frames,
                  env=environment(device), memory_kind=memory_kind(device), load_s=load_s, stages=stages,
                  dit=dit, end_to_end_s=total, frames_per_s=info['frames'] / total,
                  base_mib=info['base_mib'], peak_mib=info['peak_mib'], target=TARGET, overlap=overlaps[-1],
                  channels_last=args.channels_last, repeats=args.repeats,
                  end_to_end_runs_s={('overlap' if v else 'no_overlap'): [r[2]['end_to_end_s'] for r in rs]
                                     for v, rs in runs.items()})
    if not split.single:
        record['split'] = split_record(split, info, run['steps'])
    if len(overlaps) == 2:
        record['overlap_ratio'] = best[True][2]['end_to_end_s'] / best[False][2]['end_to_end_s']
    print_recon(record, args, cfg.config_path, peak_tflops)
    write_json(args.json, record)
    return record


def timed_runs(args, cfg, device, run, split):
    """Build the pipeline (timed: load_s) sharing its work by `split`, --warmup untimed runs, then --repeats
    timed runs of each --overlap variant taking turns; -> (load_s, {overlap: [run_recon results]})."""
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.out_dir) if args.out_dir else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = _input_video(args, tmp, run['frames'], run['height'], run['width'])
        t0 = time.perf_counter()
        channels_last = {'auto': None, 'on': True, 'off': False}[args.channels_last]
        pipe = build_pipeline(cfg, device, run['dtype'], args.compile, args.compile_mode, channels_last=channels_last)
        pipe.split = split
        load_s = time.perf_counter() - t0
        size = run['height'] if args.input else 0      # synthetic frames are made at the size asked for
        kw = dict(size=size, frames=run['frames'], steps=run['steps'], scheduler=run['scheduler'],
                  chunk_frames=args.chunk_frames, metrics=not args.no_metrics)
        overlaps = {'on': [True], 'off': [False], 'both': [False, True]}[args.overlap]
        for _ in range(args.warmup):                   # first-call costs: kernels, allocator, compilation
            run_recon(pipe, path, out_dir, overlap=overlaps[-1], **kw)
        runs = {v: [] for v in overlaps}
        for _ in range(args.repeats):                  # variants take turns, the fastest run of each is kept
            for v in overlaps:
                runs[v].append(run_recon(pipe, path, out_dir, overlap=v, **kw))
    return load_s, runs


def dit_summary(flops, stages, step_s, peak_tflops):
    """The record's 'dit' entry: step seconds, analytic FLOPs per step, TFLOP/s (of the mean step), the time in
    the dit stage outside the sampler steps, and the fraction of the hardware peak (None without one)."""
    per_step = flops['per_step']['total']
    mean_step = sum(step_s) / len(step_s)
    return dict(step_seconds=step_s, mean_step_s=mean_step, min_step_s=min(step_s), forward_calls_per_step=
                flops['per_step']['forward_calls'], flops_per_step=per_step, tflops=per_step / mean_step / 1e12,
                sampler_overhead_s=next(s['seconds'] for s in stages if s['stage'] == 'dit') - sum(step_s),
                peak_fraction=None if not peak_tflops else per_step / mean_step / 1e12 / peak_tflops)


def print_recon(record, args, config_path, peak_tflops):
    """The recon table and summary lines of one record (peak_tflops: the hardware peak, or None)."""
    dit, device = record['dit'], record['device']
    print(f"recon: {config_path}{' (random init)' if record['random_init'] else ''}, {record['input']}, "
          f"{record['frames']}x{record['height']}x{record['width']}, {record['scheduler']} {record['steps']} steps, "
          f"{device} {record['dtype']}{' compiled' if args.compile else ''}, {torch.get_num_threads()} threads; "
          f"load {record['load_s']:.2f} s")
    print_table(record['stages'], ['stage', 'seconds', 'share', 'calls', 'peak_mib'])
    print(f"DiT: {dit['mean_step_s']:.4g} s per step (min {dit['min_step_s']:.4g}), "
          f"{dit['flops_per_step'] / 1e12:.4g} TFLOP per step "
          f"({dit['forward_calls_per_step']} tile forwards), {dit['tflops']:.4g} TFLOP/s"
          + (f" = {dit['peak_fraction']:.1%} of the {peak_tflops:g} TFLOP/s bf16 peak" if peak_tflops else ''))
    if 'overlap_ratio' in record:
        print(f"overlap of reading/writing with model work: end to end {record['overlap_ratio']:.3f}x the "
              f"serial time (fastest of {args.repeats} runs each)")
    print(f"end to end {record['end_to_end_s']:.4g} s = {record['frames_per_s']:.4g} frames/s; peak "
          f"{fmt(record['peak_mib'])} MiB ({record['memory_kind']}); target (released model): "
          f"{TARGET['frames']}x{TARGET['height']}² in ≤ {TARGET['seconds']} s on {TARGET['device']}")


def add_clip_args(p):
    """The clip recon runs on (weights, source, frames, size) and its sampler steps: recon's and eval's flags."""
    p.add_argument('--random-init', action='store_true', help='random weights (same cost; no weight files)')
    p.add_argument('--input', default=None, metavar='VIDEO', help='a video file (default: a synthetic clip)')
    p.add_argument('--frames', type=int, default=None, help='frames (default: data.num_frames_per_video)')
    p.add_argument('--size', type=int, default=None, help='height (and width unless --width) in pixels; with '
                   '--input the short side is resized to it (default: data.sample_size)')
    p.add_argument('--width', type=int, default=None)
    p.add_argument('--steps', type=int, default=None, help='sampler steps (default: sampling.steps)')


def add_recon_parser(subparsers):
    p = subparsers.add_parser('recon', help='end to end per stage through CascadeV (the default subcommand)',
                              description=bench_recon.__doc__)
    add_config_args(p)
    add_clip_args(p)
    p.add_argument('--scheduler', choices=list(SAMPLERS), default=None)
    p.add_argument('--dtype', choices=['auto', *DTYPES], default=None, help="default: the config's dtype")
    p.add_argument('--compile', action='store_true', help='torch.compile the DiT (warm-up runs compile it)')
    p.add_argument('--compile-mode', default=None, help='torch.compile mode (reduce-overhead: CUDA graphs)')
    p.add_argument('--chunk-frames', type=int, default=16, help='frames read/decoded/written at a time')
    p.add_argument('--no-metrics', action='store_true', help="skip the in-loop PSNR/SSIM (as recon.py's flag)")
    p.add_argument('--warmup', type=int, default=1, help='untimed runs first (default 1)')
    p.add_argument('--repeats', type=int, default=1, help='timed runs (the fastest is reported)')
    p.add_argument('--overlap', choices=['on', 'off', 'both'], default='on',
                   help='read-ahead / write-behind threads as recon.py (both: side by side, a ratio)')
    p.add_argument('--channels-last', choices=['auto', 'on', 'off'], default='auto',
                   help='channels-last convolutions in compressor/previewer/SVD decoder (auto: on CUDA)')
    p.add_argument('--peak-tflops', type=float, default=None, help='hardware peak for the DiT peak fraction')
    p.add_argument('--out-dir', default=None, help='keep rec.mp4 / preview.mp4 here (default: a temp folder)')
    p.add_argument('--processes', type=int, default=1,
                   help='N > 1: the video shared by N processes (--threads each) beside 1 process with N x '
                        '--threads threads, with the bytes gathered (tools/bench/split.py)')
    add_run_args(p)
    p.set_defaults(func=bench_recon)

