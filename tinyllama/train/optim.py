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
    """Linear warmup to `lr`, then cosine to `min_lr` at the last step of the schedule."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    decay_steps = max(1, total_steps - o.warmup_steps)
    ratio = min(1.0, (step - o.warmup_steps) / decay_steps)
    return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (o.lr - o.min_lr)


