"""The stage-1/2 rectified-flow objective (reference notes §5.1), as pure functions over explicit noise.

Randomness (u, noise, VAE posterior noise, prompt dropout) is drawn by the caller and passed in, so the loss is
reproducible and directly comparable with the reference's recorded tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


@dataclass
class FlowMatchingTargets:
    """Per-sample training tensors: `latents` x0 and `noise` eps (lists: samples may differ in size), the
    timesteps (B,) on the 0-1000 scale and the sigmas (B,) used for x_t = (1 - sigma) x0 + sigma eps."""

    latents: list[torch.Tensor]
    noise: list[torch.Tensor]
    timesteps: torch.Tensor
    sigmas: torch.Tensor


def training_schedule(scheduler: FlowMatchEulerDiscreteScheduler, u: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform u in [0, 1) -> index floor(1000 u) into the shift-3 training table (unit weighting, 'none').

    Returns (timesteps, sigmas); sigmas are cast to the model dtype as the reference does (bf16 in training).
    """
    table = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)  # a fresh, un-`set_timesteps` table
    index = (u * table.config.num_train_timesteps).long().clamp_(0, len(table.timesteps) - 1)
    return table.timesteps[index].to(u.device), table.sigmas[index].to(u.device, dtype)


def noisy_latents(latents: Sequence[torch.Tensor], noise: Sequence[torch.Tensor], sigmas: torch.Tensor) -> list[torch.Tensor]:
    return [(1 - s) * x + s * n for x, n, s in zip(latents, noise, sigmas)]


def flow_matching_loss(predictions: Sequence[torch.Tensor], latents: Sequence[torch.Tensor], noise: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over samples of the per-sample MSE to the velocity target eps - x0, in fp32."""
    per_sample = [((p.float() - (n.float() - x.float())) ** 2).mean() for p, x, n in zip(predictions, latents, noise)]
    return torch.stack(per_sample).mean()


def predict_velocity(
    transformer: torch.nn.Module,
    targets: FlowMatchingTargets,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    reference_latents: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """Run the DiT on x_t for every sample (one batched call; per-sample sizes are padded inside the DiT)."""
    inputs = noisy_latents(targets.latents, targets.noise, targets.sigmas)
    out = transformer(inputs, encoder_hidden_states, pooled_projections, targets.timesteps, reference_latents=reference_latents).sample
    return list(out) if torch.is_tensor(out) else out
