"""RL losses as pure functions: MR-GRPO's ratio, clipped policy loss, clip fraction and v-space KL (reference notes
§6.7), and the DiffusionNFT objective (the reference trainer's alternative algorithm, §6.7 "alternatives")."""

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


def nft_optimality(advantages: torch.Tensor) -> torch.Tensor:
    """DiffusionNFT's optimality probability r = 0.5 + 0.5 clip(A, -1, 1) in [0, 1] from normalised advantages (N,)
    (Zheng et al. 2025, arXiv 2509.16117: the group-centred reward over a global scale, clipped). r = 0.5, a group
    whose images all score the same, leaves the model unchanged."""
    return 0.5 + 0.5 * advantages.float().clamp(-1.0, 1.0)


def nft_loss(velocity: torch.Tensor, old_velocity: torch.Tensor, target: torch.Tensor, optimality: torch.Tensor, beta: float,
             sigma: float | None = None) -> torch.Tensor:
    """Per-sample DiffusionNFT loss (B,) on a forward-noised clean sample:
    r ||v+ - v||^2 + (1 - r) ||v- - v||^2 with the implicit positive policy v+ = (1 - beta) v_old + beta v_theta and
    the implicit negative v- = (1 + beta) v_old - beta v_theta, squared norms as means over C, h, w.

    At v_theta = v_old its gradient is 2 beta (2r - 1)(v_old - v): flow matching towards samples with r > 0.5 and away
    from those with r < 0.5; per sample the minimiser is v_old + (2r - 1)(v - v_old) / beta, so a sample never pulls
    further than its own target.

    With `sigma` (the noise level of x_t) each branch is DiffusionNFT's adaptively weighted x0-space error instead:
    e = sigma (v_branch - v) is the error of the x0 prediction x_t - sigma v_branch, and the branch loss is
    mean(e^2) / sg(mean |e|). Every sample then pulls with an O(sigma) gradient, however large its flow-matching
    error: at high noise a single sample's target eps - x0 is mostly noise, and unweighted it dominates the update.

    Args:
        velocity: v_theta (B, C, h, w), with grad; old_velocity: v_old, the rollout policy's, no grad.
        target: the flow-matching target eps - x0; optimality: r (B,) in [0, 1]; beta: the implicit guidance strength.
        sigma: the noise level of the forward-noised sample, for the adaptive weighting (None: plain v-space loss).
    """
    v, old, tgt = velocity.float(), old_velocity.float(), target.float()
    r = optimality.float().to(v.device)

    def branch(prediction: torch.Tensor) -> torch.Tensor:
        if sigma is None:
            return (prediction - tgt).pow(2).flatten(1).mean(1)
        err = (sigma * (prediction - tgt)).flatten(1)
        return err.pow(2).mean(1) / err.detach().abs().mean(1).clamp_min(1e-5)

    return r * branch((1 - beta) * old + beta * v) + (1 - r) * branch((1 + beta) * old - beta * v)
