"""The optimizer and its learning rate: PixArt's auto_lr scaling to the effective batch, a linear warm-up,
CAME or AdamW."""
import math

import torch
from came_pytorch import CAME

from tools.config import ConfigError


def effective_lr(cfg, world_size):
    """(lr, effective batch): optimizer.lr scaled by optimizer.auto_lr to world_size × train.batch_size.

    PixArt's auto_lr: rule 'sqrt' gives lr·√(B / base_batch_size) (the release: 2e-5 → 2.5e-6 at B = 4,
    7.1e-6 at B = 32), 'linear' lr·B / base_batch_size; auto_lr None leaves optimizer.lr as it is.
    """
    batch = world_size * cfg.train.batch_size
    auto = cfg.optimizer.get('auto_lr')
    if not auto:
        return float(cfg.optimizer.lr), batch
    ratio = batch / auto['base_batch_size']
    return float(cfg.optimizer.lr) * (math.sqrt(ratio) if auto['rule'] == 'sqrt' else ratio), batch


def lr_at(step, lr, warmup_steps):
    """The lr of optimizer step `step` (0-based): a linear warm-up to `lr` over warmup_steps steps, then
    constant; warmup_steps 0 or None gives `lr` from the start."""
    return lr * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def build_optimizer(params, cfg, lr):
    """CAME (Luo et al. 2023; betas/eps from the config) or AdamW (betas[:2]; eps[0] when a tuple is given).

    ConfigError for any other optimizer.type.
    """
    o = cfg.optimizer
    if o.type == 'CAME':
        return CAME(params, lr=lr, betas=tuple(o.betas), eps=tuple(o.eps), weight_decay=o.weight_decay)
    if o.type == 'AdamW':
        eps = o.eps[0] if isinstance(o.eps, (list, tuple)) else o.eps
        eps = eps if eps >= 1e-12 else 1e-8   # CAME's 1e-30 would make Adam's update unbounded
        return torch.optim.AdamW(params, lr=lr, betas=tuple(o.betas[:2]), eps=eps, weight_decay=o.weight_decay)
    raise ConfigError(f"{cfg.get('config_path', 'config')}: optimizer.type={o.type!r}; use 'CAME' or 'AdamW'")
