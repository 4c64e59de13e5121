"""Stand-in for `comfy.model_base`: `BaseModel` builds `diffusion_model` with the ops ComfyUI picks, owns the model
sampling object and turns sampler inputs into the diffusion model's call, as ComfyUI's does (no hooks, no
wrappers, no ControlNet)."""

from __future__ import annotations

from enum import Enum

import torch

from . import conds, model_sampling, ops


class ModelType(Enum):
    EPS = 1
    V_PREDICTION = 2
    V_PREDICTION_EDM = 3
    STABLE_CASCADE = 4
    EDM = 5
    FLOW = 6


def _model_sampling(model_config, model_type):
    if model_type != ModelType.FLOW:
        raise NotImplementedError("the stand-in knows only flow models")

    class ModelSampling(model_sampling.ModelSamplingDiscreteFlow, model_sampling.CONST):
        pass

    return ModelSampling(model_config)


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, model_type=ModelType.EPS, device=None, unet_model=None):
        super().__init__()
        unet_config = model_config.unet_config
        self.latent_format = model_config.latent_format
        self.model_config = model_config
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = device
        if model_config.custom_operations is None:
            operations = ops.pick_operations(unet_config.get("dtype"), self.manual_cast_dtype, fp8_optimizations=model_config.optimizations.get("fp8", False))
        else:
            operations = model_config.custom_operations
        self.diffusion_model = unet_model(**unet_config, device=device, operations=operations)
        self.model_type = model_type
        self.model_sampling = _model_sampling(model_config, model_type)
        self.memory_usage_factor = model_config.memory_usage_factor
        self.memory_usage_factor_conds = ()

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        context = c_crossattn.to(xc.device, dtype) if c_crossattn is not None else None
        extra = {k: ([e.to(xc.device, dtype) for e in v] if isinstance(v, list) else v.to(xc.device, dtype)) for k, v in kwargs.items()}
        output = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options or {}, **extra).float()
        return self.model_sampling.calculate_denoised(sigma, output, x)

    def get_dtype(self):
        return self.diffusion_model.dtype

    def encode_adm(self, **kwargs):
        return None

    def extra_conds(self, **kwargs):
        out = {}
        adm = self.encode_adm(**kwargs)
        if adm is not None:
            out["y"] = conds.CONDRegular(adm)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = conds.CONDRegular(cross_attn)  # ComfyUI: CONDCrossAttn (pads by repetition)
        return out

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)
