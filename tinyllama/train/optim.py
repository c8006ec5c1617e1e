"""The optimizer and the learning-rate schedule (TinyLlama's: AdamW, linear warmup, cosine to
`min_lr` at the last step of the schedule, whatever the batch size does in between; a family's
trunk and branches share one schedule, see `lr_at`)."""

from __future__ import annotations

import math

import torch

from tinyllama.train.config import OptimConfig, TrainConfig


def build_optimizer(model: torch.nn.Module, o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on RMSNorm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=1e-8, fused=device.type == "cuda")


def lr_at(step: int, cfg: TrainConfig, total_steps: int, family: tuple[int, int | None] | None = None) -> float:
    """The learning rate of optimizer step `step` (0-based) of a `total_steps` schedule.

    Linear warmup to `lr` over `warmup_steps`, then
      cosine: cosine to `min_lr` at the last step, `total_steps - 1` (TinyLlama);
      wsd:    stable at `lr`, then over the last `decay_fraction` of the steps a decay to
              `min_lr` at the last step (`decay_shape` linear, or 1-sqrt as in MiniCPM / OLMo-core).

    A family (`family = (branch_step, own_steps)`; `own_steps` None for the trunk) has one lr
    schedule, so the trunk's lr at each step equals every branch's and trunk + branch trains
    like the branch straight through. `total_steps` is then the longest branch's length:
      cosine: the trunk follows the cosine over `total_steps`; a branch as long follows it to
              its end; a shorter (or longer) one, from the branch point (or the end of warmup,
              if later), moves the rest of the way to `min_lr` at its own last step: the lr is
              continuous at the branch point and every branch ends at `min_lr`;
      wsd:    each branch decays over the last `decay_fraction` of its own steps (the train
              config refuses a decay that would start before the branch point), so the trunk is
              warmup then stable whatever the branches.
    """
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    branch_step, own = family if family else (None, None)
    if o.schedule == "wsd":
        n = own or total_steps
        decay_start = wsd_decay_start(cfg, n)
        if step < decay_start:
            return o.lr
        return decay(o.lr, o.min_lr, step - decay_start, n - 1 - decay_start, o.decay_shape)

    def progress(s: int, n: int) -> float:
        return min(1.0, max(0.0, (s - o.warmup_steps) / max(1, n - 1 - o.warmup_steps)))

    ratio = progress(step, total_steps)
    if own is not None and own != total_steps:
        anchor = max(branch_step, o.warmup_steps)
        if step >= anchor:
            start = progress(anchor, total_steps)
            ratio = start + (1.0 - start) * min(1.0, (step - anchor) / max(1, own - 1 - anchor))
    return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (o.lr - o.min_lr)


def wsd_decay_start(cfg: TrainConfig, total_steps: int) -> int:
    """The first step of a `total_steps` WSD schedule's decay."""
    o = cfg.optim
    return max(o.warmup_steps, total_steps - max(1, round(o.decay_fraction * total_steps)))


def decay(start_lr: float, min_lr: float, i: int, n: int, shape: str) -> float:
    """Step `i` of an `n`-step decay from `start_lr` to `min_lr` (reached at i = n)."""
    if n <= 0:  # a decay of no steps is already over
        return min_lr
    progress = min(1.0, max(0.0, i / max(1, n)))
    frac = 1.0 - (math.sqrt(progress) if shape == "1-sqrt" else progress)
    return min_lr + (start_lr - min_lr) * frac


def anneal_lr(step: int, cfg: TrainConfig, start_step: int, start_lr: float, steps: int) -> float:
    """`tinyllama train --anneal-from CKPT --anneal-steps N`: from the checkpoint's learning
    rate at its step, down to `min_lr` over the next N steps (the optimizer step after the last
    one is at `min_lr`), in `optim.decay_shape`."""
    return decay(start_lr, cfg.optim.min_lr, step - start_step + 1, steps, cfg.optim.decay_shape)
