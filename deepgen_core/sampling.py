"""The flow-matching step functions shared by the pipeline, the ComfyUI sampler and RL rollouts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .errors import DeepGenInputError


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


# ------------------------------------------------------------------------------------------------ SDE steps (RL)
# Stochastic steps for MR-GRPO rollouts (reference notes §6.3-6.4). One function samples x_{i+1} and returns its
# log-probability, and the same function scores a stored x_{i+1} during the policy update, so rollout and loss
# cannot drift apart. All arithmetic is fp32 (the reference's bf16 old log-probs are its bug §9.25).

SDE_SAMPLERS = ("cps_sde", "flowgrpo_sde", "dance_sde")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class SDEStepOutput:
    """One SDE step. `prev_latents`: x_{i+1} (B, C, h, w) in the latents' dtype; `log_prob`: (B,) fp32, the
    per-sample log-density of x_{i+1} averaged over C, h, w; `mean`: the fp32 Gaussian mean (B, C, h, w); `std`:
    the fp32 standard deviation, broadcastable to the latents (0 on a final step to sigma = 0)."""

    prev_latents: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _as_sigma(value: float | torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A float or (B,) sigma as an fp32 tensor broadcastable to `ref` (B, C, h, w)."""
    s = torch.as_tensor(value, dtype=torch.float32, device=ref.device)
    return s.reshape(-1, *([1] * (ref.dim() - 1))) if s.dim() else s


def _cps_mean_std(v, x, sigma, sigma_next, eta):
    """Flow-CPS: x0 = x - sigma v, x1 = x + (1 - sigma) v; std = sigma' sin(eta pi / 2);
    mean = (1 - sigma') x0 + sqrt(sigma'^2 - std^2) x1 (eta = 1: re-noise the x0 estimate with fresh noise)."""
    x0, x1 = x - sigma * v, x + (1 - sigma) * v
    std = sigma_next * math.sin(eta * math.pi / 2)
    mean = (1 - sigma_next) * x0 + (sigma_next**2 - std**2).clamp_min(0).sqrt() * x1
    return mean, std


def _flowgrpo_mean_std(v, x, sigma, sigma_next, eta):
    """Flow-GRPO: s = eta sqrt(sigma / (1 - sigma~)), sigma~ = sigma except at sigma = 1 where the next sigma (the
    scheduler's sigma_1) is used; mean = x (1 + s^2 dt / (2 sigma)) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt, std = s sqrt(-dt)."""
    dt = sigma_next - sigma
    safe = torch.where(sigma >= 1, sigma_next, sigma)
    s = eta * (sigma / (1 - safe)).sqrt()
    mean = x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, s * (-dt).sqrt()


def _dance_mean_std(v, x, sigma, sigma_next, eta):
    """DanceGRPO: x0 = x - sigma v; mean = x + (v + eta^2 (x - (1 - sigma) x0) / (2 (sigma^2 + 1e-8))) dt,
    std = eta sqrt(-dt)."""
    dt = sigma_next - sigma
    x0 = x - sigma * v
    mean = x + (v + 0.5 * eta**2 * (x - (1 - sigma) * x0) / (sigma**2 + 1e-8)) * dt
    return mean, eta * (-dt).sqrt()


def _cps_log_prob(sample, mean, std):
    """The reference's simplified CPS log-prob: -mean_{C,h,w} (x' - mean)^2 (no variance, no constant, §6.4)."""
    return -((sample - mean) ** 2).flatten(1).mean(1)


def _gaussian_log_prob(sample, mean, std):
    """Gaussian log-density averaged over C, h, w, with the reference's 1e-8 guards (§6.4)."""
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    density = -((sample - mean) ** 2) / (2 * (std**2 + 1e-8)) - torch.log(std + 1e-8) - _LOG_SQRT_2PI
    return density.flatten(1).mean(1)


# Variants are chosen once from these tables, never by string comparison inside the denoising loop.
_SDE_MEAN_STD = {"cps_sde": _cps_mean_std, "flowgrpo_sde": _flowgrpo_mean_std, "dance_sde": _dance_mean_std}
_SDE_LOG_PROB = {"cps_sde": _cps_log_prob, "flowgrpo_sde": _gaussian_log_prob, "dance_sde": _gaussian_log_prob}


def check_sde_sampler(sampler: str) -> str:
    """Return `sampler` if it is one of `SDE_SAMPLERS`, else raise a `DeepGenInputError` listing them."""
    if sampler not in _SDE_MEAN_STD:
        raise DeepGenInputError(f"sampler must be one of {list(SDE_SAMPLERS)}, got {sampler!r}.")
    return sampler


def _draw_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """fp32 noise drawn on the generator's device (a CPU seed reproduces on any device), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def sde_step(
    sampler: str,
    velocity: torch.Tensor,
    latents: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    eta: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    prev_latents: torch.Tensor | None = None,
) -> SDEStepOutput:
    """One stochastic step x_i -> x_{i+1} with its log-probability (reference notes §6.3-6.4).

    Args:
        sampler: 'cps_sde' (reference default), 'flowgrpo_sde' or 'dance_sde'.
        velocity: the DiT velocity v (B, C, h, w) at `latents` (any dtype; upcast to fp32).
        latents: x_i (B, C, h, w).
        sigma, sigma_next: the step's sigmas, floats or (B,) tensors; sigma_next = 0 makes CPS deterministic.
        eta: noise level (reference: 1.0).
        generator: draws the noise on its own device (then moved), so a CPU seed gives the same sample anywhere.
        noise: explicit standard-normal noise (B, C, h, w) instead of drawing.
        prev_latents: a stored x_{i+1}: score it instead of sampling (the policy update recomputes log-probs).

    Returns:
        `SDEStepOutput`; `prev_latents` is cast to `latents.dtype` and `log_prob` is that stored sample's.
    """
    mean_std = _SDE_MEAN_STD[check_sde_sampler(sampler)]
    x, v = latents.float(), velocity.float()
    s, s_next = _as_sigma(sigma, x), _as_sigma(sigma_next, x)
    mean, std = mean_std(v, x, s, s_next, eta)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    if prev_latents is None:
        if noise is None:
            noise = _draw_noise(x.shape, generator, x.device)
        prev_latents = (mean + std * noise.float()).to(latents.dtype)
    log_prob = _SDE_LOG_PROB[sampler](prev_latents.float(), mean, std)
    return SDEStepOutput(prev_latents=prev_latents, log_prob=log_prob, mean=mean, std=std)
