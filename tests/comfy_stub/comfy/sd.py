
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


class CLIP:
    """Stand-in for `comfy.sd.CLIP`: tokenizer + `cond_stage_model` behind a ModelPatcher (the `no_init` form that
    `clone` and custom text encoders use; no hooks or scheduling)."""

    def __init__(self, target=None, embedding_directory=None, no_init=False, tokenizer_data=None, parameters=0, model_options=None):
        if not no_init:
            raise NotImplementedError("the stand-in builds CLIP objects only with no_init=True")

    def clone(self):
        n = CLIP(no_init=True)
        n.patcher, n.cond_stage_model, n.tokenizer = self.patcher.clone(), self.cond_stage_model, self.tokenizer
        n.layer_idx, n.tokenizer_options, n.use_clip_schedule = self.layer_idx, dict(self.tokenizer_options), self.use_clip_schedule
        n.apply_hooks_to_conds = self.apply_hooks_to_conds
        return n

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def load_model(self):
        from . import model_management

        model_management.load_model_gpu(self.patcher)
        return self.patcher

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        self.cond_stage_model.reset_clip_options()
        if self.layer_idx is not None:
            self.cond_stage_model.set_clip_options({"layer": self.layer_idx})
        self.load_model()
        o = self.cond_stage_model.encode_token_weights(tokens)
        cond, pooled = o[:2]
        if return_dict:
            return {"cond": cond, "pooled_output": pooled, **(o[2] if len(o) > 2 else {})}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        pooled_dict = self.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        cond = pooled_dict.pop("cond")
        pooled_dict.update(add_dict or {})
        return [[cond, pooled_dict]]
