
"""Stand-in for `comfy.sd.VAE`: a diffusers AutoencoderKL behind ComfyUI's VAE interface (IMAGE in, raw latents
out and back). Real ComfyUI detects the architecture from the weights; the stand-in reads the DeepGen metadata, or, for TAESD
files (`taesd_decoder.1.weight`, as ComfyUI detects them), builds DeepGen's tiny VAE (the same network)."""

from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL


class VAE:
    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None):
        if "taesd_decoder.1.weight" in sd:
            from deepgen_core.loading import vae_from_state

            self.first_stage_model = vae_from_state(sd, None, "stand-in TAESD", latent_channels=None).float()
        else:
            if not metadata or "vae_config" not in metadata:
                raise RuntimeError("stand-in VAE needs DeepGen's vae_config metadata")
            self.first_stage_model = AutoencoderKL.from_config(json.loads(metadata["vae_config"]))
            self.first_stage_model.load_state_dict(sd)
        self.first_stage_model.eval()
        self.latent_channels = self.first_stage_model.config.latent_channels
        self.output_device = torch.device("cpu")

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        pixels = pixel_samples[..., :3].movedim(-1, 1) * 2.0 - 1.0
        return self.first_stage_model.encode(pixels.float()).latent_dist.mode().to(self.output_device)

    def decode(self, samples_in: torch.Tensor) -> torch.Tensor:
        pixels = self.first_stage_model.decode(samples_in.float()).sample
        return torch.clamp((pixels + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1).to(self.output_device)

    def spacial_compression_decode(self) -> int:
        return 8

    def spacial_compression_encode(self) -> int:
        return 8
