"""A worker of tests/test_parallel.py: the CascadeV stages on a real clip with the work split across the
processes of a launch (WORLD_SIZE/RANK/MASTER_ADDR/MASTER_PORT set by the test; alone without them).

    python tests/workers/split_stages.py MODE OUT_DIR CLIP
MODE 'stages': encode, preview, refine (2 steps, 4 tiles per DiT call), SVD decode (the config's chunks
overlapping by 2, in chunks of 3 and 4 frames) of 12 frames at 128x160; rank 0 writes OUT_DIR/stages.safetensors
and OUT_DIR/counters.json.
MODE 'all': then the failure protocol (an item raising on rank 1, abort() outside map, a broadcast); each rank
writes OUT_DIR/rank{R}.json with what it saw.
"""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.parallel import SplitAborted, WorkSplit  # noqa: E402


def stages(split, out, clip):
    from safetensors.torch import save_file
    from models.pipeline import CascadeV
    from tools.config import load_config
    from tools.video.read import read_frames
    pipe = CascadeV.from_config(load_config('configs/tiny.py'), device='cpu', dtype='fp32')
    pipe.split = split
    frames, _ = read_frames(clip, num_frames=12)                                   # (12, 144, 176, 3)
    video = torch.from_numpy(frames[:, 8:136, 8:168]).permute(3, 0, 1, 2).float() / 127.5 - 1   # (3, 12, 128, 160)
    latent = pipe.encode(video)
    preview = pipe.preview(latent)
    z = pipe.refine(latent, steps=2, seed=1, tile_batch=4)
    decoded = torch.cat(list(pipe.vae_decode_chunks(z, chunk_size=3)), dim=1)
    blended = torch.cat(list(pipe.vae.decode_iter(z, decode_chunk=4, decode_overlap=2, split=split)), dim=1)
    split.finish()
    if split.main:
        results = dict(latent=latent, preview=preview, z=z, decoded=decoded, blended=blended)
        save_file({k: v.contiguous() for k, v in results.items()}, str(out / 'stages.safetensors'))
        (out / 'counters.json').write_text(json.dumps({'bytes_gathered': split.bytes_gathered,
                                                       'exchanges': split.exchanges}))


def failures(split, out):
    seen = {}

    def item(i):
        if i == 3 and split.rank == 1:
            raise ValueError('item 3 cannot be computed')
        return torch.full((i + 1,), float(i))          # a different shape per item
    try:
        seen['first'] = [x.tolist() for x in split.map(item, range(5))]
    except SplitAborted as e:
        seen['first'] = f'SplitAborted: {e}'
    except ValueError as e:
        seen['first'] = f'ValueError: {e}'
        split.abort()                                  # as recon does after any failure: told already, no exchange
    seen['second'] = [x.tolist() for x in split.map(lambda i: torch.tensor([i * 10]), range(3))]
    try:                                               # rank 1 fails outside map; rank 0 is in its next map
        if split.rank == 1:
            split.abort()
        else:
            list(split.map(lambda i: torch.zeros(2), range(4)))
            split.finish()
        seen['third'] = 'finished'
    except SplitAborted as e:
        seen['third'] = f'SplitAborted: {e}'
    seen['fourth'] = split.broadcast({'plan': split.rank})
    (out / f'rank{split.rank}.json').write_text(json.dumps(seen))


def main():
    mode, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        dist.init_process_group('gloo')
    split = WorkSplit.from_process_group()
    stages(split, out, sys.argv[3])
    if mode == 'all':
        failures(split, out)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
