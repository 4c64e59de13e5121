"""DeepGen's tiny VAE: diffusers' `AutoencoderTiny` (the TAESD network) in the SD3 latent convention.

The network outputs "native" 16-channel latents, which is what a ComfyUI TAESD file with `vae_scale = 1`,
`vae_shift = 0` calls VAE space. Its config carries the SD3 `scaling_factor` / `shift_factor`, so the DiT's
model-space latents are `(native - shift) * scale` exactly as for the real SD3 VAE, and every caller that
assumes those constants (pipeline, trainer, ComfyUI nodes) works unchanged. The trainer
(`deepgen_core.train.vae`) shapes the latent space so that model-space latents are about N(0, 1).

`encode` returns diffusers' `AutoencoderKL` interface: a deterministic `latent_dist` (std 0; `sample()`,
`mode()` and `mean` are the latents), so `vae.encode(x).latent_dist` works for both VAEs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderTiny
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import BaseOutput

from ..latents import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR

TINY_LATENT_CHANNELS = 16
COMFY_BLOCK_CHANNELS = 64  # ComfyUI's TAESD class builds 64-channel blocks only


@dataclass
class TinyVAEEncoderOutput(BaseOutput):
    """`latents` (B, C, h, w) native latents; `latent_dist` the same as a zero-variance Gaussian."""

    latents: torch.Tensor
    latent_dist: DiagonalGaussianDistribution


class DeepGenTinyVAE(AutoencoderTiny):
    """`AutoencoderTiny` whose `encode` also returns `latent_dist` (as `AutoencoderKL`). Images are (B, 3, H, W)
    in [-1, 1]; latents (B, latent_channels, H/8, W/8) in native (VAE) space."""

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> TinyVAEEncoderOutput | tuple[torch.Tensor]:
        """Encode (B, 3, H, W) pixels in [-1, 1] to native latents.

        Returns:
            `TinyVAEEncoderOutput` with `latents` and a deterministic `latent_dist`, or `(latents,)`.
        """
        latents = super().encode(x, return_dict=False)[0]
        if not return_dict:
            return (latents,)
        # DiagonalGaussianDistribution reads (mean, logvar) stacked on dim 1; `deterministic` zeroes its std.
        dist = DiagonalGaussianDistribution(torch.cat([latents, torch.zeros_like(latents)], dim=1), deterministic=True)
        return TinyVAEEncoderOutput(latents=latents, latent_dist=dist)

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        # diffusers' tiled encode writes into a 4-channel buffer (SD1 TAESD) and fails for 16 channels. The tiny
        # encoder's peak memory is small (~0.5 GB at 1024^2 in bf16), so `enable_tiling` tiles the decoder only.
        return self.encoder(x)


def tiny_vae_config(channels: int = COMFY_BLOCK_CHANNELS, latent_channels: int = TINY_LATENT_CHANNELS) -> dict:
    """The shipping architecture: AutoencoderTiny defaults (4 stages, (1,3,3,3) / (3,3,3,1) blocks) with 16
    latent channels and the SD3 scaling/shift. `channels` other than 64 do not load in ComfyUI."""
    return {
        "encoder_block_out_channels": (channels,) * 4, "decoder_block_out_channels": (channels,) * 4,
        "latent_channels": latent_channels, "scaling_factor": SD3_SCALING_FACTOR, "shift_factor": SD3_SHIFT_FACTOR,
    }


def tiny_taesd_vae(seed: int = 0, channels: int = COMFY_BLOCK_CHANNELS) -> DeepGenTinyVAE:
    """A randomly initialised tiny VAE (seeded; the global RNG state is restored afterwards).

    Args:
        seed: seed of the initial weights.
        channels: block width (64 ships and loads in ComfyUI; smaller widths are for fast tests).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DeepGenTinyVAE(**tiny_vae_config(channels)).eval()
