"""The stage-1/2 rectified-flow objective (reference notes §5.1), as pure functions over explicit noise.

Randomness (u, noise, VAE posterior noise, prompt dropout) is drawn by the caller and passed in, so the loss is
reproducible and directly comparable with the reference's recorded tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

Latents = torch.Tensor | Sequence[torch.Tensor]


@dataclass
class FlowMatchingTargets:
    """Training tensors: `latents` x0 and `noise` eps, each a (B, C, H, W) tensor when the samples share a size or
    a list of (C, H_i, W_i); the timesteps (B,) on the 0-1000 scale and the sigmas (B,) used for
    x_t = (1 - sigma) x0 + sigma eps."""

    latents: Latents
    noise: Latents
    timesteps: torch.Tensor
    sigmas: torch.Tensor


def training_schedule(scheduler: FlowMatchEulerDiscreteScheduler, u: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform u in [0, 1) -> index floor(1000 u) into the shift-3 training table (unit weighting, 'none').

    Returns (timesteps, sigmas); sigmas are cast to the model dtype as the reference does (bf16 in training).
    """
    table = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)  # a fresh, un-`set_timesteps` table
    index = (u * table.config.num_train_timesteps).long().clamp_(0, len(table.timesteps) - 1)
    return table.timesteps[index].to(u.device), table.sigmas[index].to(u.device, dtype)


def noisy_latents(latents: Latents, noise: Latents, sigmas: torch.Tensor) -> Latents:
    if torch.is_tensor(latents):
        # The same rounding as the per-sample form with a 0-dim sigma: 1 - sigma in the sigmas' dtype, then cast.
        shape = (-1,) + (1,) * (latents.ndim - 1)
        return (1 - sigmas).to(latents.dtype).view(shape) * latents + sigmas.to(latents.dtype).view(shape) * noise
    return [(1 - s) * x + s * n for x, n, s in zip(latents, noise, sigmas)]


def per_sample_flow_loss(predictions: Latents, latents: Latents, noise: Latents) -> torch.Tensor:
    """(B,) per-sample MSE to the velocity target eps - x0, in fp32."""
    if all(torch.is_tensor(t) and t.ndim == 4 for t in (predictions, latents, noise)):
        return ((predictions.float() - (noise.float() - latents.float())) ** 2).flatten(1).mean(1)
    return torch.stack([((p.float() - (n.float() - x.float())) ** 2).mean() for p, x, n in zip(predictions, latents, noise)])


def flow_matching_loss(predictions: Latents, latents: Latents, noise: Latents) -> torch.Tensor:
    """Mean over samples of the per-sample MSE to the velocity target eps - x0, in fp32."""
    return per_sample_flow_loss(predictions, latents, noise).mean()


def predict_velocity(
    transformer: torch.nn.Module | Callable[..., Any],
    targets: FlowMatchingTargets,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    reference_latents: Sequence[Sequence[torch.Tensor]] | None = None,
) -> Latents:
    """Run the DiT on x_t for every sample (one batched call; per-sample sizes are padded inside the DiT); a
    (B, C, H, W) tensor when the samples share a size, else a list. `transformer`: the DiT, or a call with its
    signature and `.sample` result (`train.graphs.TrainingGraphs.transformer_call`)."""
    inputs = noisy_latents(targets.latents, targets.noise, targets.sigmas)
    return transformer(inputs, encoder_hidden_states, pooled_projections, targets.timesteps, reference_latents=reference_latents).sample
