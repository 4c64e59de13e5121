"""The MR-GRPO policy update (reference notes §6.7-6.9) over a scored rollout.

For each trained step j (a random subset) and each micro-batch of images: recompute v_theta(x_j, t_j) with
gradients, score the stored x_{j+1} with the same SDE step as the rollout (fp32 log-probs), form the ratio, the
clipped policy loss and the v-space KL to the frozen starting DiT, and back-propagate. The auxiliary SFT loss is
mixed in as (1 - lambda) GRPO + lambda SFT. Optimizer semantics: one update per rollout batch by default;
`reference_stepping` steps after every backward as the reference does (§9.12).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...sampling import sde_step
from .config import PolicyConfig
from .losses import clip_fraction, clipped_policy_loss, probability_ratio, velocity_kl
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
    emb = type(ro.embeddings)(*(t[rows] if t.shape[0] else t for t in vars(ro.embeddings).values()))
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
) -> dict[str, float]:
    """Back-propagate the GRPO loss over `steps` x micro-batches (+ the auxiliary SFT loss) and step the optimizer.

    Args:
        backward: `backward(loss, boundary)`; `boundary` is True for the last backward before an optimizer step
            (DDP syncs and DeepSpeed reduces only there).
        optimizer_step: clips, steps optimizer and LR schedule, zeroes grads; returns the gradient norm.
        sft_loss: returns the auxiliary flow-matching loss (with grad), or None to skip it this step.

    Returns:
        averaged metrics: loss/policy, kl, clip_frac, ratio_dev, loss/sft, grad_norm, optimizer_updates.
    """
    n = ro.latents.shape[1]
    bounds = [slice(s, min(s + policy.micro_batch_size, n)) for s in range(0, n, policy.micro_batch_size)]
    jobs: list[tuple[int, slice] | None] = [(step, rows) for step in steps for rows in bounds]
    if sft_loss is not None:
        jobs.append(None)  # the auxiliary SFT backward comes last
    mix = 1.0 - policy.sft_coef if sft_loss is not None else 1.0
    scale = 1.0 / (len(steps) * len(bounds))  # mean over trained steps and micro-batches
    metrics = {"loss/policy": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_dev": 0.0}
    norms = []
    for k, job in enumerate(jobs):
        boundary = policy.reference_stepping or k == len(jobs) - 1
        if job is None:
            loss = sft_loss()
            backward(loss * policy.sft_coef, boundary)
            metrics["loss/sft"] = float(loss.detach())
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
