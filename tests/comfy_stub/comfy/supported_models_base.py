"""Stand-in for `comfy.supported_models_base.BASE`: a model config (unet config, sampling settings, latent format,
inference dtypes) with ComfyUI's constructor and `set_inference_dtype`."""

from __future__ import annotations

import torch

from . import latent_formats


class BASE:
    unet_config = {}  # noqa: RUF012 - ComfyUI's class attributes
    unet_extra_config = {"num_heads": -1, "num_head_channels": 64}  # noqa: RUF012
    sampling_settings = {}  # noqa: RUF012
    latent_format = latent_formats.SD3
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]  # noqa: RUF012
    memory_usage_factor = 2.0
    manual_cast_dtype = None
    custom_operations = None
    scaled_fp8 = None
    optimizations = {"fp8": False}  # noqa: RUF012

    def __init__(self, unet_config):
        self.unet_config = unet_config.copy()
        self.sampling_settings = self.sampling_settings.copy()
        self.latent_format = self.latent_format()
        self.optimizations = self.optimizations.copy()
        for key in self.unet_extra_config:
            self.unet_config[key] = self.unet_extra_config[key]

    def set_inference_dtype(self, dtype, manual_cast_dtype):
        self.unet_config["dtype"] = dtype
        self.manual_cast_dtype = manual_cast_dtype
