"""Optimizer and learning-rate schedule builders shared by every stage (reference notes §5.3)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import OptimConfig


def parameter_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: trainable params with ndim >= 2 get `weight_decay`, the rest (biases, norms) 0.

    The reference's `CustomAdamW` uses the same rule, so the 2-D think tokens are decayed.
    """
    decay, no_decay = [], []
    for _, param in named_parameters:
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """torch AdamW over the trainable parameters of `model` (a client optimizer for DeepSpeed too, which
    avoids compiling DeepSpeed's fused Adam). On CUDA the fused kernel is used."""
    groups = parameter_groups(model.named_parameters(), config.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters; check the stage's freezing rules.")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused or None)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, start_factor: float, min_ratio: float) -> float:
    """LR factor: linear from `start_factor` to 1 over `warmup_steps`, then cosine from 1 to `min_ratio` at
    `total_steps` (mmengine's LinearLR + CosineAnnealingLR as the reference chains them)."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> LambdaLR:
    """Per-optimizer-step schedule. Step it yourself after each optimizer step: it is deliberately not passed to
    `accelerator.prepare`, which would advance it once per process."""
    return LambdaLR(optimizer, lambda s: warmup_cosine(s, config.warmup_steps, total_steps, config.warmup_start_factor, config.min_lr_ratio))
