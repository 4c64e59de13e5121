"""Latent-space conventions shared by hosts: seeded CPU noise and the VAE-space / model-space conversion.

The DiT works on "model space" latents, `(z - shift_factor) * scaling_factor` of the VAE's raw latents `z`
(SD3: 1.5305 and 0.0609, reference notes §3.4). Hosts that pass latents between tools in VAE space (ComfyUI's
LATENT) convert at the edges with these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609


def to_model_space(latents: torch.Tensor, scaling_factor: float = SD3_SCALING_FACTOR, shift_factor: float = SD3_SHIFT_FACTOR) -> torch.Tensor:
    """Raw VAE latents (B, 16, h, w) -> the DiT's scaled latents."""
    return (latents - shift_factor) * scaling_factor


def to_vae_space(latents: torch.Tensor, scaling_factor: float = SD3_SCALING_FACTOR, shift_factor: float = SD3_SHIFT_FACTOR) -> torch.Tensor:
    """The DiT's scaled latents -> raw VAE latents (what `vae.decode` takes)."""
    return latents / scaling_factor + shift_factor


def initial_noise(shape: Sequence[int], generator: torch.Generator, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """fp32 noise for a (B, C, h, w) batch drawn from a CPU `generator`.

    Without `batch_index` this is `torch.randn(shape, generator=generator)`, the pipeline's own initial noise for
    the same generator. With `batch_index` (one index per sample), sample i gets the `batch_index[i]`-th of a
    sequence of single-sample draws, so a sample keeps its noise whether it is generated alone or inside a batch
    (ComfyUI's LATENT `batch_index` convention).
    """
    if batch_index is None:
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if len(batch_index) != shape[0]:
        raise ValueError(f"batch_index has {len(batch_index)} entries for a batch of {shape[0]}.")
    draws = [torch.randn((1, *shape[1:]), generator=generator, dtype=torch.float32) for _ in range(max(batch_index) + 1)]
    return torch.cat([draws[i] for i in batch_index])


def vae_scale_factor(vae) -> int:
    """Pixels per latent along a side, from a VAE's config: `AutoencoderKL` (SD3: 8) halves once per block
    after the first; `AutoencoderTiny` upsamples by `upsampling_scaling_factor` between decoder stages."""
    config = vae.config
    upsampling = getattr(config, "upsampling_scaling_factor", None)
    if upsampling is not None:
        return int(upsampling) ** (len(config.decoder_block_out_channels) - 1)
    return 2 ** (len(config.block_out_channels) - 1)
