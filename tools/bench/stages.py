"""`stages`: the frozen convolutional stages (compressor, previewer, SVD decoder): fp32 / bf16, NCHW / channels-last."""
import copy

import torch

from models.pipeline import to_channels_last
from models.weights import DTYPES, build_compressor, build_previewer, build_vae, resolve_dtype
from tools.bench.measure import (add_config_args, add_run_args, diff_stats, environment, load_cfg, print_table,
                                 setup_device, synthetic_video, time_interleaved, write_json)


def bench_stages(args):
    """The frozen convolutional stages (compressor, previewer, SVD decoder): fp32 vs bf16, NCHW vs channels-last."""
    cfg = load_cfg(args, random_init=True)
    device = setup_device(args)
    video = synthetic_video(args.frames, args.size, args.size)[None].to(device)        # (1, 3, T, H, W)
    base = dict(compressor=build_compressor(cfg, device), previewer=build_previewer(cfg, device),
                svd_decode=build_vae(cfg, device))
    with torch.inference_mode():
        inputs = dict(compressor=video, previewer=base['compressor'].encode(video).float(),
                      svd_decode=base['svd_decode'].encode(video).float())
    call = dict(compressor=lambda m, x: m.encode(x), previewer=lambda m, x: m.decode(x),
                svd_decode=lambda m, x: m.decode(x))
    rows = []
    for stage, module in base.items():
        variants, fns = {}, {}
        for dtype in args.dtypes:
            for cl in (False, True):
                m = copy.deepcopy(module).to(dtype=resolve_dtype(dtype))
                variants[(dtype, cl)] = to_channels_last(m) if cl else m

        for key, m in variants.items():
            def run(m=m):
                with torch.inference_mode():
                    return call[stage](m, inputs[stage]).float()
            fns[key] = run
        with torch.inference_mode():
            outs = {k: f() for k, f in fns.items()}
        times = time_interleaved(fns, device, args.repeats, args.warmup)
        first = next(iter(fns))
        for (dtype, cl), (median, best) in times.items():
            rows.append(dict(stage=stage, dtype=dtype, channels_last=cl, median_ms=median, min_ms=best,
                             ratio=best / times[first][1], **{f'{k}_vs_{first[0]}': v for k, v in
                                                            diff_stats(outs[(dtype, cl)], outs[first]).items()
                                                            if k in ('max_abs', 'mean_abs')}))
    print(f"stages: {cfg.config_path} (random init), {args.frames}x{args.size}², {device}, "
          f"{torch.get_num_threads()} threads; ratio = min_ms / the stage's first row")
    print_table(rows, ['stage', 'dtype', 'channels_last', 'median_ms', 'min_ms', 'ratio'] +
                [k for k in rows[0] if '_vs_' in k])
    write_json(args.json, dict(benchmark='stages', config=cfg.config_path, cfg_options=args.cfg_options,
                               frames=args.frames, size=args.size, env=environment(device), rows=rows))
    return rows


def add_stages_parser(subparsers):
    p = subparsers.add_parser('stages', help='compressor / previewer / SVD decoder: fp32 vs bf16, channels-last',
                              description=bench_stages.__doc__)
    add_config_args(p)
    p.add_argument('--frames', type=int, default=4)
    p.add_argument('--size', type=int, default=64, help='frame size in pixels (square)')
    p.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=list(DTYPES))
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    add_run_args(p)
    p.set_defaults(func=bench_stages)

