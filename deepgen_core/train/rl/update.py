"""The policy update over a scored rollout: MR-GRPO (reference notes §6.7-6.9) or DiffusionNFT.

MR-GRPO: for each trained step j (a random subset) and each micro-batch of images, recompute v_theta(x_j, t_j) with
gradients, score the stored x_{j+1} with the same SDE step as the rollout (fp32 log-probs), form the ratio, the
clipped policy loss and the v-space KL to the frozen starting DiT, and back-propagate.

DiffusionNFT (`policy.algorithm: nft`): for the same step subset, noise the rollout's final (clean) latents afresh to
that step's sigma, x_t = (1 - sigma) x0 + sigma eps, and regress v_theta against eps - x0 through the implicit
positive / negative policies around the rollout policy's v_old, weighted by each image's optimality (`losses.nft_loss`).
Only the clean samples are used, so the rollout may be deterministic.

The auxiliary SFT loss is mixed in as (1 - lambda) RL + lambda SFT. Optimizer semantics: one update per rollout batch
by default; `reference_stepping` steps after every backward as the reference does (§9.12).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...sampling import sde_step
from .config import PolicyConfig
from .losses import (
    clip_fraction,
    clipped_policy_loss,
    nft_loss,
    nft_optimality,
    probability_ratio,
    velocity_kl,
)
from .rollout import Rollout, RolloutSettings, dit_velocity


def num_trained_steps(num_steps: int, fraction: float, include_last: bool) -> int:
    """How many denoising steps one update trains: int(num_steps x fraction), at most the candidates."""
    return min(int(num_steps * fraction), num_steps if include_last else num_steps - 1)


def choose_timesteps(num_steps: int, fraction: float, include_last: bool, rng: random.Random) -> list[int]:
    """`num_trained_steps` distinct step indices, sorted; the last step only if `include_last` (§6.7)."""
    candidates = num_steps if include_last else num_steps - 1
    return sorted(rng.sample(range(candidates), num_trained_steps(num_steps, fraction, include_last)))


@dataclass
class MicroBatchLosses:
    """Scalars of one micro-batch: `loss` (with grad) = policy + beta KL; the rest detached for logging."""

    loss: torch.Tensor
    policy: torch.Tensor
    kl: torch.Tensor
    clip_frac: torch.Tensor
    ratio_dev: torch.Tensor


def micro_batch_losses(model: torch.nn.Module, ref_model: torch.nn.Module, ro: Rollout, advantages: torch.Tensor, step: int,
                       rows: slice, settings: RolloutSettings, policy: PolicyConfig) -> MicroBatchLosses:
    """Policy loss + beta KL for images `rows` at denoising step `step`.

    Args:
        advantages: (N,) fp32 for the whole rollout batch.
    """
    x, x_next = ro.latents[step, rows], ro.latents[step + 1, rows]
    emb = _rows(ro.embeddings, rows)
    t = ro.timesteps[step]
    velocity = dit_velocity(model, x, t, emb, settings.guidance_scale)
    out = sde_step(settings.sampler, velocity, x, ro.sigmas[step], ro.sigmas[step + 1], eta=settings.eta, prev_latents=x_next)
    ratio = probability_ratio(out.log_prob, ro.log_probs[step, rows].to(out.log_prob.device))
    adv = advantages[rows].to(ratio.device)
    policy_loss = clipped_policy_loss(adv, ratio, policy.clip_range)
    if policy.kl_beta > 0:
        with torch.no_grad():
            ref_velocity = dit_velocity(ref_model, x, t, emb, settings.guidance_scale)
        kl = velocity_kl(velocity, ref_velocity, out.std).mean()
    else:
        kl = torch.zeros((), device=ratio.device)
    return MicroBatchLosses(policy_loss + policy.kl_beta * kl, policy_loss.detach(), kl.detach(),
                            clip_fraction(adv, ratio, policy.clip_range).detach(), (ratio - 1).abs().mean().detach())


def _rows(embeddings, rows: slice):
    return type(embeddings)(*(t[rows] if t.shape[0] else t for t in vars(embeddings).values()))


def nft_micro_batch_losses(model: torch.nn.Module, old_model: torch.nn.Module | None, ref_model: torch.nn.Module, ro: Rollout, advantages: torch.Tensor,
                           step: int, rows: slice, noise: torch.Tensor, settings: RolloutSettings, policy: PolicyConfig) -> MicroBatchLosses:
    """DiffusionNFT loss + beta_KL x (mean squared velocity difference to the frozen starting DiT) for images `rows`,
    forward-noised to the sigma of denoising step `step` with `noise` (same shape as the rows' latents). Velocities at
    `policy.nft_guidance_scale` (1: conditional only; the rollout's CFG negatives are in the embeddings). `old_model`
    None: v_old is the trained DiT's own velocity (no update has happened since the rollout)."""
    x0 = ro.latents[-1, rows].float()
    sigma = float(ro.sigmas[step])
    eps = noise.to(x0.device, torch.float32)
    x_t = ((1 - sigma) * x0 + sigma * eps).to(ro.latents.dtype)
    emb = _rows(ro.embeddings, rows)
    t = ro.timesteps[step]
    scale = policy.nft_guidance_scale
    velocity = dit_velocity(model, x_t, t, emb, scale)
    if old_model is None:  # the rollout policy is the trained DiT as it is now: the same forward
        old_velocity = velocity.detach()
    else:
        with torch.no_grad():
            old_velocity = dit_velocity(old_model, x_t, t, emb, scale)
    optimality = nft_optimality(advantages[rows])
    loss = nft_loss(velocity, old_velocity, eps - x0, optimality, policy.nft_beta, sigma if policy.nft_adaptive_weight else None).mean()
    if policy.kl_beta > 0:
        with torch.no_grad():
            ref_velocity = dit_velocity(ref_model, x_t, t, emb, scale)
        kl = (velocity.float() - ref_velocity.float()).pow(2).flatten(1).mean(1).mean()
    else:
        kl = torch.zeros((), device=loss.device)
    zero = torch.zeros((), device=loss.device)
    return MicroBatchLosses(loss + policy.kl_beta * kl, loss.detach(), kl.detach(), zero, zero)


def policy_update(
    ro: Rollout,
    advantages: torch.Tensor,
    model: torch.nn.Module,
    ref_model: torch.nn.Module,
    settings: RolloutSettings,
    policy: PolicyConfig,
    steps: list[int],
    backward: Callable[[torch.Tensor, bool], None],
    optimizer_step: Callable[[], float | None],
    sft_loss: Callable[[], torch.Tensor] | None = None,
    old_model: torch.nn.Module | None = None,
    noise_generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Back-propagate the GRPO or NFT loss over `steps` x micro-batches (+ the auxiliary SFT loss) and step the optimizer.

    Args:
        backward: `backward(loss, boundary)`; `boundary` is True for the last backward before an optimizer step
            (DDP syncs and DeepSpeed reduces only there).
        optimizer_step: clips, steps optimizer and LR schedule, zeroes grads; returns the gradient norm.
        sft_loss: returns the auxiliary flow-matching loss (with grad), or None to skip it this step.
        old_model: DiffusionNFT's rollout policy v_old (algorithm 'nft'); None when it is the trained DiT itself, which
            needs one optimizer update per step (not `reference_stepping`).
        noise_generator: draws DiffusionNFT's forward noise, on the CPU in fp32: one tensor per (step, micro-batch), or
            with `policy.nft_group_noise` one per step of (groups, C, h, w), repeated over each group's images.

    Returns:
        averaged metrics: loss/policy, kl, clip_frac, ratio_dev, loss/sft, grad_norm, optimizer_updates.
    """
    n = ro.latents.shape[1]
    nft = policy.algorithm == "nft"
    if nft and old_model is None and policy.reference_stepping:
        raise ValueError("policy.algorithm 'nft' with reference_stepping updates the DiT within a step: pass the rollout policy (old_model)")
    bounds = [slice(s, min(s + policy.micro_batch_size, n)) for s in range(0, n, policy.micro_batch_size)]
    jobs: list[tuple[int, slice] | None] = [(step, rows) for step in steps for rows in bounds]
    if sft_loss is not None:
        jobs.append(None)  # the auxiliary SFT backward comes last
    mix = 1.0 - policy.sft_coef if sft_loss is not None else 1.0
    scale = 1.0 / (len(steps) * len(bounds))  # mean over trained steps and micro-batches
    metrics = {"loss/policy": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_dev": 0.0}
    group_noise: dict[int, torch.Tensor] = {}
    if nft and policy.nft_group_noise:  # drawn up front, so the micro-batch split does not change which noise an image gets
        for step in steps:
            shared = torch.randn((n // ro.group_size, *ro.latents.shape[2:]), generator=noise_generator, dtype=torch.float32)
            group_noise[step] = shared.repeat_interleave(ro.group_size, dim=0)
    norms = []
    for k, job in enumerate(jobs):
        boundary = policy.reference_stepping or k == len(jobs) - 1
        if job is None:
            loss = sft_loss()
            backward(loss * policy.sft_coef, boundary)
            metrics["loss/sft"] = float(loss.detach())
        else:
            if nft:
                rows = job[1]
                if group_noise:
                    noise = group_noise[job[0]][rows]
                else:
                    noise = torch.randn((rows.stop - rows.start, *ro.latents.shape[2:]), generator=noise_generator, dtype=torch.float32)
                parts = nft_micro_batch_losses(model, old_model, ref_model, ro, advantages, job[0], rows, noise, settings, policy)
            else:
                parts = micro_batch_losses(model, ref_model, ro, advantages, job[0], job[1], settings, policy)
            backward(parts.loss * scale * mix, boundary)
            for key, value in zip(("loss/policy", "kl", "clip_frac", "ratio_dev"), (parts.policy, parts.kl, parts.clip_frac, parts.ratio_dev)):
                metrics[key] += float(value) * scale
        if boundary:
            norms.append(optimizer_step())
    valid = [g for g in norms if g is not None]
    if valid:
        metrics["grad_norm"] = sum(valid) / len(valid)
    metrics["optimizer_updates"] = float(len(norms))
    return metrics
