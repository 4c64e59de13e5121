"""MR-GRPO losses as pure functions (reference notes §6.7): ratio, clipped policy loss, clip fraction, v-space KL."""

from __future__ import annotations

import torch


def probability_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """rho = exp(log p_new - log p_old), both in fp32 (the reference rounds the old one to bf16, bug §9.25)."""
    return torch.exp(log_prob.float() - old_log_prob.float())


def clipped_policy_loss(advantages: torch.Tensor, ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO objective: mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - c, 1 + c)).

    Args:
        advantages: (B,) fp32.
        ratio: (B,) fp32 probability ratios.
        clip_range: c (reference: 1e-4).
    """
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean()


def clip_fraction(advantages: torch.Tensor, ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Fraction of samples whose gradient the clip removes: rho > 1 + c with A > 0, or rho < 1 - c with A < 0."""
    clipped = ((ratio > 1 + clip_range) & (advantages > 0)) | ((ratio < 1 - clip_range) & (advantages < 0))
    return clipped.float().mean()


def velocity_kl(velocity: torch.Tensor, ref_velocity: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Per-sample v-space KL (B,): mean over C, h, w of (v - v_ref)^2 / (2 std^2 + 1e-7), std = the step's SDE std.

    This is the Gaussian KL (m1 - m2)^2 / (2 std^2) with the velocity difference standing in for the difference of
    the step means, as the reference's 'v-based' KL does (§6.7); 1e-7 guards std = 0.
    """
    std = torch.as_tensor(std, dtype=torch.float32, device=velocity.device)
    return ((velocity.float() - ref_velocity.float()) ** 2 / (2 * std**2 + 1e-7)).flatten(1).mean(1)
