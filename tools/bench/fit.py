"""Brief fits of the tiny stages to real clips, so that seam measurements see trained-like weights, not random ones.

A random temporal decoder or DiT mixes every frame / token with every other (see README, seams): the error of a
chunked run against a whole run is then as large inside a chunk as at its edge. A few hundred Adam steps on real
frames teach the weights what trained ones do: reconstruct each frame (decoder) and predict the noise of each
latent pixel (DiT) mostly from nearby inputs. Weights are updated in place; nothing is saved.
"""
import torch
import torch.nn.functional as F
from einops import rearrange

from diffusion import create_diffusion
from models.pipeline import upsample_latent


def _crop(generator, video, frames, size):
    """A random (frames, size, size) crop of a (1, C, T, H, W) tensor (whole axes where they are shorter)."""
    T, H, W = video.shape[2:]
    k, h, w = min(frames, T), min(size, H), min(size, W)
    pick = lambda n, m: int(torch.randint(0, n - m + 1, (1,), generator=generator))
    t, y, x = pick(T, k), pick(H, h), pick(W, w)
    return video[:, :, t:t + k, y:y + h, x:x + w], (t, y, x, k, h, w)


def _train(params, loss_fn, steps, lr):
    params = [p for p in params]
    with torch.inference_mode(False), torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        losses = []
        for step in range(steps):
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        for p in params:
            p.requires_grad_(False)
    return losses


def fit_decoder(vae, videos, steps, lr=1e-3, max_frames=8, crop=64, seed=0):
    """Fit the SVD VAE's decoder (encoder frozen) to reconstruct `videos` [(1, 3, T, H, W)]: MSE on random crops of
    2..max_frames consecutive frames (the temporal layers see clips of every length up to it); -> losses."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        latents = [vae.encode(v).float() / vae.scale_factor for v in videos]          # (1, 4, T, H/8, W/8)
    vae.vae.decoder.train()

    def loss_fn(step):
        i = step % len(videos)
        k = int(torch.randint(2, max_frames + 1, (1,), generator=g))
        z, (t, y, x, k, h, w) = _crop(g, latents[i].clone(), k, crop // 8)
        target = videos[i][:, :, t:t + k, 8 * y:8 * (y + h), 8 * x:8 * (x + w)]
        out = vae.vae.decode(rearrange(z, 'b c t h w -> (b t) c h w').to(vae.dtype), num_frames=k).sample
        return F.mse_loss(out.float(), rearrange(target, 'b c t h w -> (b t) c h w').float())
    losses = _train(vae.vae.decoder.parameters(), loss_fn, steps, lr)
    vae.vae.decoder.eval()
    return losses


def fit_dit(pipe, videos, steps, lr=1e-3, seed=0):
    """Fit the DiT with the IDDPM loss on `videos` at its training geometry (tiles of input_size latent pixels,
    lats_per_vid frames), as train_vae.py trains it; -> losses."""
    g = torch.Generator().manual_seed(seed)
    dit, diffusion = pipe.dit, create_diffusion()
    with torch.inference_mode():
        pairs = [torch.cat([pipe.vae.encode(v).float(),
                            upsample_latent(pipe.encode(v), pipe.sr_scale, pipe.scale_factor)], 1) for v in videos]
    dit.train()

    def loss_fn(step):
        x, _ = _crop(g, pairs[step % len(videos)].clone(), dit.lats_per_vid, dit.input_size)
        t = torch.randint(0, diffusion.num_timesteps, (1,), generator=g).to(x.device)
        noise = torch.randn(x[:, :4].shape, generator=g).to(x.device)
        return diffusion.training_losses(dit, x[:, :4], x[:, 4:], t, noise=noise)['loss'].mean()
    losses = _train(dit.parameters(), loss_fn, steps, lr)
    dit.eval()
    return losses
