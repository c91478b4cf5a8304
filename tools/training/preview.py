"""The training run's previews: the held-out clip reconstructed by the DiT being trained (tools.training.loop)."""
import torch

from models.pipeline import CascadeV
from tools.video.panels import side_by_side
from tools.video.write import write_video


@torch.no_grad()
def write_preview(path, model, stages, clip, cfg, step):
    """Reconstruct the held-out clip (3, T, S, S) in [-1, 1] with the models being trained
    (models.pipeline.CascadeV, cfg.sampling); write original | reconstruction side by side as an mp4."""
    pipe = CascadeV(cfg, compressor=stages['compressor'], dit=model, vae=stages['vae'], device=stages['device'],
                    dtype=stages['dtype'])
    was_training = model.training
    model.eval()
    try:
        recon = pipe.decode(pipe.encode(clip[None].to(stages['dtype'])), steps=cfg.sampling.steps,
                            scheduler=cfg.sampling.scheduler, seed=cfg.sampling.seed)[0]   # (3, T, H, W)
    finally:
        model.train(was_training)
    panel = side_by_side([clip.float(), recon.cpu()], ['held-out clip', f'reconstruction, step {step}'])
    write_video(path, panel, fps=8)
