"""The optimizer and the learning-rate schedule (TinyLlama's: AdamW, linear warmup, cosine to
`min_lr` at the last step of the schedule, whatever the batch size does in between)."""

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


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of a `total_steps` schedule.

    Linear warmup to `lr` over `warmup_steps`, then
      cosine: cosine to `min_lr` at the last step (TinyLlama);
      wsd:    stable at `lr`, then over the last `decay_fraction` of the steps a decay to
              `min_lr` (`decay_shape` linear, or 1-sqrt as in MiniCPM / OLMo-core).
    """
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "wsd":
        decay_steps = max(1, round(o.decay_fraction * total_steps))
        decay_start = max(o.warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return o.lr
        return decay(o.lr, o.min_lr, step - decay_start, total_steps - decay_start, o.decay_shape)
    decay_steps = max(1, total_steps - o.warmup_steps)
    ratio = min(1.0, (step - o.warmup_steps) / decay_steps)
    return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (o.lr - o.min_lr)


def decay(start_lr: float, min_lr: float, i: int, n: int, shape: str) -> float:
    """Step `i` of an `n`-step decay from `start_lr` to `min_lr` (reached at i = n)."""
    progress = min(1.0, max(0.0, i / max(1, n)))
    frac = 1.0 - (math.sqrt(progress) if shape == "1-sqrt" else progress)
    return min_lr + (start_lr - min_lr) * frac


def anneal_lr(step: int, cfg: TrainConfig, start_step: int, start_lr: float, steps: int) -> float:
    """`tinyllama train --anneal-from CKPT --anneal-steps N`: from the checkpoint's learning
    rate at its step, down to `min_lr` over the next N steps (the optimizer step after the last
    one is at `min_lr`), in `optim.decay_shape`."""
    return decay(start_lr, cfg.optim.min_lr, step - start_step + 1, steps, cfg.optim.decay_shape)
