"""The flow-matching step functions shared by the pipeline, the ComfyUI sampler and RL rollouts."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def inference_schedule(scheduler: FlowMatchEulerDiscreteScheduler, num_steps: int, shift: float | None = None) -> tuple[torch.Tensor, list[float]]:
    """Timesteps (N,) on the 0-1000 scale and the N+1 sigmas (last 0) of a fresh copy of `scheduler`.

    diffusers shifts the already-shifted sigma_min again ("double shift", reference notes §1.7); we keep it for
    fidelity. `shift` overrides the scheduler's shift (3.0 for SD3.5-M). Sigmas are returned as Python floats
    so that the denoising loop never reads a device tensor back to the host.
    """
    config = dict(scheduler.config)
    if shift is not None:
        config["shift"] = float(shift)
    fresh = FlowMatchEulerDiscreteScheduler.from_config(config)
    fresh.set_timesteps(num_steps, device="cpu")
    return fresh.timesteps.float(), [float(s) for s in fresh.sigmas]


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v, cast back to the velocity's dtype.

    Mirrors diffusers' Euler step bit for bit: the product dt * v is formed in the velocity's dtype (a 0-dim
    sigma does not promote it), the sum in fp32, then one rounding back (reference notes §1.7).
    """
    return (latents.float() + (sigma_next - sigma) * velocity).to(velocity.dtype)


def predicted_x0(latents: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """The clean-latent estimate x0 = x_t - sigma v (used for previews)."""
    return (latents.float() - sigma * velocity.float()).to(velocity.dtype)
