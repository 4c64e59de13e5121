"""Advantages from per-reward scores (reference notes §6.6). Pure functions; the variant is chosen once by name.

`rewards` is (N, K) fp32 with NaN where a reward did not score an image (an OCR reward on a prompt without
quoted text); `weights` is (N, K); groups are G consecutive rows (one prompt, same initial noise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...errors import DeepGenInputError

EPS = 1e-4  # the reference's std guard


def group_normalize(values: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """(v - group mean) / (group std + eps) per column over the scored (non-NaN) members of each group.

    Std is Bessel-corrected as torch.std. A group with fewer than two scored members, or with zero variance, gives
    0; unscored entries give 0 (they carry no signal, reference bug §9.11 turned them into a penalty).

    Args:
        values: (N, K) with N divisible by `group_size`.
    """
    n, k = values.shape
    if n % group_size:
        raise DeepGenInputError(f"batch of {n} images is not a whole number of groups of {group_size}.")
    grouped = values.reshape(n // group_size, group_size, k)
    scored = ~torch.isnan(grouped)
    count = scored.sum(1, keepdim=True)
    filled = torch.where(scored, grouped, torch.zeros_like(grouped))
    mean = filled.sum(1, keepdim=True) / count.clamp_min(1)
    centered = torch.where(scored, grouped - mean, torch.zeros_like(grouped))
    std = (centered.pow(2).sum(1, keepdim=True) / (count - 1).clamp_min(1)).sqrt()
    normalized = torch.where(scored & (count > 1), centered / (std + eps), torch.zeros_like(grouped))
    return normalized.reshape(n, k)


def batch_normalize(values: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(v - mean) / (std + eps) over the whole (N,) batch, Bessel-corrected std; 0 for a single value."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    return (values - values.mean()) / (values.std() + eps)


def weighted_total(rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N,) sum_k w_k r_k, with unscored rewards counting 0 (for logging and the non-GDPO modes)."""
    return (torch.nan_to_num(rewards, nan=0.0) * weights).sum(1)


def gdpo_advantages(rewards: torch.Tensor, weights: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """GDPO (reference default): normalise each reward within its group, weight, sum, then batch-normalise."""
    return batch_normalize((group_normalize(rewards, group_size, eps) * weights).sum(1), eps)


def grpo_advantages(rewards: torch.Tensor, weights: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """GRPO: group-normalise the weighted total."""
    return group_normalize(weighted_total(rewards, weights)[:, None], group_size, eps)[:, 0]


def grpo_global_std_advantages(rewards: torch.Tensor, weights: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """Group mean subtracted, divided by the batch std of the weighted total."""
    total = weighted_total(rewards, weights)
    centered = total - total.reshape(-1, group_size).mean(1).repeat_interleave(group_size)
    return centered / (total.std() + eps) if total.numel() > 1 else torch.zeros_like(total)


def reinforcepp_advantages(rewards: torch.Tensor, weights: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """REINFORCE++: batch-normalise the weighted total."""
    return batch_normalize(weighted_total(rewards, weights), eps)


ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "gdpo": gdpo_advantages, "grpo": grpo_advantages, "grpo_global_std": grpo_global_std_advantages, "reinforcepp": reinforcepp_advantages,
}


def compute_advantages(rewards: torch.Tensor, weights: torch.Tensor, group_size: int, mode: str = "gdpo", clip: float = 5.0) -> torch.Tensor:
    """Advantages (N,) fp32, clamped to [-clip, clip] (reference: 5.0).

    Args:
        rewards: (N, K) fp32, NaN = not scored.
        weights: (N, K) fp32 per-sample reward weights.
        group_size: G; N must be a multiple.
        mode: one of `ADVANTAGES`.
    """
    if mode not in ADVANTAGES:
        raise DeepGenInputError(f"advantage mode must be one of {sorted(ADVANTAGES)}, got {mode!r}.")
    return ADVANTAGES[mode](rewards.float(), weights.float(), group_size).clamp(-clip, clip)
