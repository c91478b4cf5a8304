"""Reconstruct videos with CascadeV: read -> encode -> preview -> refine (DiT) -> SVD decode.

    python recon.py --config configs/s1024.effn-f32.py --input VIDEOS --output OUT [options]
    python recon.py --config configs/s1024.effn-f32.py --decode-from OUT/NAME/latent.safetensors --output OUT2
    accelerate launch recon.py ...          # one process per GPU; they claim the videos, largest first

Writes OUT/NAME/{latent.safetensors, preview.mp4, rec.mp4, cmp.mp4, cmp.png, done.json} per video (NAME is
the file stem). Outputs keep the source's displayed size (or the plan's crop: --square, --preprocess cascadev),
its pixel aspect ratio (SAR) and its frame times; done.json records the frame plan (tools/video/frames.py) that
tools/eval.py reuses, and the settings that shape the outputs. This file parses the flags into
tools.recon.settings.RunSettings and runs tools.recon.batch.run (resume, failures, --eval; the per-video loop
is tools/recon/reconstruct.py).

Several processes (a launcher, or runs on one --output) claim videos largest first, none done twice;
--claim-wait S waits for the others' videos, taking over those whose process died. Under a launcher with fewer
videos than processes (or --split-video) each video is shared by all: its DiT forwards, SVD decode and frame
chunks are split and gathered, and the main process writes the files (tools/recon/per_video.py).

Reruns: every file goes through a temp name and a rename; done.json is written last, so a video with a
done.json is complete. A rerun skips it if its done.json 'settings' equal this run's, and otherwise redoes it,
printing one line that names the settings that differ; a video that is redone (or --overwrite) has its old
files removed first. A bad file is reported as "PATH: reason" and skipped; the run ends with "k/N failed".
Exit codes: 0 all done, 1 some videos failed or were being written by another process (rerun to resume), 2
usage errors (bad flags or config, unknown or absent device, missing weights, output inside the input folder;
before any work), 130 interrupted (Ctrl-C; a rerun resumes).
"""
import argparse
import sys

from diffusion.samplers import SAMPLERS
from models.autoencoders import AUTOENCODERS
from models.weights import DTYPES, MissingWeightsError, WeightsFormatError
from tools.config import ConfigError, add_cfg_options
from tools.recon.batch import run
from tools.recon.settings import DEFAULT_CONFIG, RunSettings, UsageError
from tools.video.frames import PREPROCESS


def add_autoencoder_flags(p):
    """Another video autoencoder in CascadeV's place, under the same frame plan, files and resume."""
    g = p.add_argument_group('other autoencoders (models/autoencoders.py; docs/autoencoders.md)')
    g.add_argument('--autoencoder', choices=('cascadev', *AUTOENCODERS), default=RunSettings.autoencoder,
                   help='cascadev (default) or another video autoencoder: svd (the SVD VAE alone), sd (an image '
                        'VAE per frame), cogvideox, hunyuanvideo, ltx-video, wan2.1, cosmos, easyanimate')
    g.add_argument('--autoencoder-weights', default=None, metavar='DIR',
                   help="its diffusers folder (or a pipeline folder with vae/); svd: default the config's weights.vae")


def add_sampling_flags(p):
    """The sampler of the refinement (the config's sampling.* by default)."""
    d = RunSettings
    g = p.add_argument_group('sampling')
    g.add_argument('--preview-only', action='store_true', help='fast mode: previewer only, no DiT and no SVD decode')
    g.add_argument('--scheduler', choices=list(SAMPLERS), default=d.scheduler,
                   help='sampler (default: sampling.scheduler of the config, EulerA)')
    g.add_argument('--steps', type=int, default=d.steps, help='sampler steps (default: sampling.steps, 8)')
    g.add_argument('--seed', type=int, default=d.seed,
                   help="seed (default: sampling.seed, 42); each video's noise comes from (seed, video name)")


def add_source_flags(p):
    """How the sources are read: by default HDR is tone-mapped to SDR and interlaced video deinterlaced."""
    g = p.add_argument_group('source')
    g.add_argument('--keep-hdr', action='store_true',
                   help='read HDR (PQ/HLG) code values as stored instead of tone-mapping them to SDR BT.709')
    g.add_argument('--keep-fields', action='store_true',
                   help='encode interlaced frames as stored (woven fields) instead of deinterlacing them (bwdif)')


def add_process_flags(p):
    """How several processes share a batch: whole videos claimed largest first, or each video shared."""
    g = p.add_argument_group('several processes (a launcher, or runs on one --output)')
    g.add_argument('--claim-wait', type=float, default=RunSettings.claim_wait, metavar='SECONDS',
                   help='after its pass, wait up to SECONDS for videos other processes are writing: count those '
                        'they complete, take over those whose process died (default 0: report them not done, exit 1)')
    g.add_argument('--split-video', action='store_true',
                   help='under a launcher: share every video among all the processes (DiT tiles and windows, '
                        'SVD decode and frame chunks; the default when fewer videos than processes are left)')


def build_parser():
    """recon.py's flags; their defaults are RunSettings' (tools/recon/settings.py)."""
    d = RunSettings
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=d.config,
                   help=f'model config (default: {DEFAULT_CONFIG})')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--input', nargs='+', metavar='PATH', help='video files and/or folders of videos')
    src.add_argument('--decode-from', nargs='+', metavar='LATENT',
                     help='latent.safetensors files (or folders of them) saved by an earlier run: decode '
                          'without the source videos')
    p.add_argument('--output', required=True, help='output folder (one sub-folder per video)')
    g = p.add_argument_group('frames')
    g.add_argument('--num-frames', type=int, default=d.num_frames, help='frames per video (default: all)')
    g.add_argument('--frame-stride', type=int, default=d.frame_stride, help='use every S-th frame (default 1)')
    g.add_argument('--start', type=int, default=d.start, help='first frame (default 0)')
    g.add_argument('--size', type=int, default=d.size,
                   help="resize the short side to SIZE before encoding, 0 = native size (default: the config's "
                        "data.sample_size, 1024 for s1024.effn-f32); outputs are resized back to the source size")
    g.add_argument('--square', action='store_true', help='center-crop a square first (as the original recon did)')
    g.add_argument('--preprocess', choices=PREPROCESS, default=d.preprocess,
                   help="default: the full frame, padded to 32 and restored to the source size; cascadev: the "
                        "original's blur + OpenCV resize + crop to multiples of 32, outputs at that crop")
    g.add_argument('--fps', type=float, default=d.fps,
                   help="write at this constant rate (default: each frame at its source time; constant-rate "
                        "sources play at source fps / frame stride)")
    g.add_argument('--lossless', action='store_true',
                   help='lossless video files (for exact metrics; larger, and fewer players handle them)')
    g.add_argument('--upscale', action='store_true',
                   help="outputs at the model's resolution (short side --size, the source's aspect ratio) instead "
                        "of resized back to the source: the cascade as a super-resolution stage")
    g.add_argument('--interp', type=int, default=d.interp, metavar='K',
                   help='interpolate the latent K x in time before refinement: K*(T-1)+1 frames at K x the frame '
                        'rate, the source frames at multiples of K (default 1: the source rate)')
    add_source_flags(p)
    add_sampling_flags(p)
    add_autoencoder_flags(p)
    g = p.add_argument_group('hardware and run')
    g.add_argument('--device', default=d.device, help="cpu | cuda | cuda:N | auto (default: the config's device)")
    g.add_argument('--dtype', choices=('auto', *DTYPES), default=d.dtype,
                   help="stage precision (default: the config's dtype, auto = bf16 on CUDA GPUs with native bf16, "
                        "else fp32: bf16 on a CPU is emulated and much slower); the DiT runs under autocast")
    g.add_argument('--compile', action='store_true', help='torch.compile the DiT (pays off on long runs on GPU)')
    g.add_argument('--chunk-frames', type=int, default=d.chunk_frames,
                   help='frames read/decoded/written at a time (memory flat in clip length; default 16)')
    g.add_argument('--max-memory', default=d.max_memory, metavar='SIZE',
                   help="peak memory budget, e.g. 24GB, 2.5GB: chunk frames, DiT tiles per call, the SVD decode "
                        "chunk/tiles and the encoder look-ahead are chosen to fit it and the plan is printed "
                        "(default: none on CPU, the free device memory on CUDA); CPU: process RSS, CUDA: max "
                        "allocated + context")
    g.add_argument('--overwrite', action='store_true',
                   help='redo videos whose outputs are already complete (their old files are removed first)')
    g.add_argument('--no-metrics', action='store_true',
                   help='skip the in-loop PSNR/SSIM of done.json (tools/eval.py scores the files anyway)')
    g.add_argument('--eval', action='store_true', help='after the batch, run tools/eval.py on the outputs')
    g.add_argument('--dit-checkpoint', default=d.dit_checkpoint, metavar='PATH',
                   help="DiT weights (a training checkpoint's model.safetensors, a .pth): weights.dit=PATH")
    g.add_argument('--vmaf', action='store_true', help='with --eval: also compute VMAF (tools/eval.py --vmaf)')
    add_cfg_options(g)
    add_process_flags(p)
    return p



def main(argv=None):
    """Run recon; -> exit code (0 ok, 1 some videos failed, 2 usage error or missing weights, 130 Ctrl-C)."""
    args = build_parser().parse_args(argv)
    try:
        return run(RunSettings.from_flags(args)).code
    except (UsageError, ConfigError, MissingWeightsError, WeightsFormatError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
