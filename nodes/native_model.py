"""DeepGen's DiT as a native ComfyUI `MODEL`: a `model_base.BaseModel` with SD3 flow sampling and DeepGen's conds.

KSampler, every sampler and scheduler, ModelSamplingSD3, the LoRA loaders, TorchCompileModel, weight dtypes
(comfy.ops) and the memory manager then apply to it as to any built-in model. The conditioning it reads is
ComfyUI's own: the sequence (`cross_attn`), `pooled_output`, and `reference_latents` appended by the built-in
ReferenceLatent (or DeepGen Reference Latent), each in VAE space like every LATENT.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..deepgen_core.errors import DeepGenInputError
from ..deepgen_core.models.transformer import DeepGenSD3Transformer, ModulationMixin
from ..deepgen_core.native_dit import DiTWeights
from ._comfy import latent_formats, model_management, model_patcher
from ._comfy_native import comfy_conds, model_base, supported_models_base
from .model import _place_remaining_tensors

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn}
_LAYER_NAMES = {torch.nn.Linear: "Linear", torch.nn.Conv2d: "Conv2d", torch.nn.LayerNorm: "LayerNorm"}


class DeepGenComfyDiT(DeepGenSD3Transformer):
    """DeepGen's DiT behind the call ComfyUI's `BaseModel` makes: `(x, timesteps, context=, y=, ref_latents=)`.

    `x` (B, 16, h, w) and each reference (B, 16, h_k, w_k) are in the DiT's scaled latent space, `timesteps` (B,)
    on the 0-1000 scale, `context` the SCB sequence and `y` the pooled vector. Returns the velocity (B, 16, h, w).
    """

    storage_dtype: torch.dtype = torch.float32

    @property
    def dtype(self) -> torch.dtype:  # the weight dtype ComfyUI reports and casts to (fp8 storage included)
        return self.storage_dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None, y: torch.Tensor | None = None,
                ref_latents: list[torch.Tensor] | None = None, control: Any = None, transformer_options: dict | None = None, **kwargs: Any) -> torch.Tensor:
        self._check_sizes(x, ref_latents or [])
        refs = None
        if ref_latents:
            refs = [[r[i if r.shape[0] > 1 else 0] for r in ref_latents] for i in range(x.shape[0])]  # (1 or B, 16, h, w) each
        return super().forward(x, context, y, timesteps, reference_latents=refs, return_dict=False)[0]


    def _check_sizes(self, x: torch.Tensor, references: list[torch.Tensor]) -> None:
        limit = self.config.pos_embed_max_size * self.config.patch_size  # latent pixels the position table covers
        for name, t in (("the latent", x), *((f"reference latent {k}", r) for k, r in enumerate(references))):
            if max(t.shape[-2:]) > limit:
                raise DeepGenInputError(f"{name} is {t.shape[-1] * 8}x{t.shape[-2] * 8} px; DeepGen's DiT covers at most {limit * 8} px a side. Use a smaller size (or reference_size).")
            if t.shape[-1] % self.config.patch_size or t.shape[-2] % self.config.patch_size:
                raise DeepGenInputError(f"{name} is {t.shape[-1] * 8}x{t.shape[-2] * 8} px; DeepGen needs multiples of {8 * self.config.patch_size}.")


def _comfy_layer_classes(operations: Any) -> tuple[dict[type, type], type]:
    """torch layer -> the `operations` twin (comfy.ops: plain, manual-cast or fp8), adaLN Linears included."""
    mapping = {torch_cls: getattr(operations, name) for torch_cls, name in _LAYER_NAMES.items()}
    modulation = type("ComfyModulationLinear", (ModulationMixin, operations.Linear), {})
    return mapping, modulation


def build_dit(*, config: dict, device: Any = None, operations: Any = None, dtype: torch.dtype | None = None,
              compute_dtype: torch.dtype | None = None, **_: Any) -> DeepGenComfyDiT:
    """The `unet_model` factory `BaseModel` calls: an empty (meta) DiT whose layers are `operations`' classes, so
    that weight casting, fp8 storage and partial loading follow ComfyUI's choice. The weights of comfy.ops layers
    get the storage `dtype` (e.g. fp8), everything else (norm weights, biases, the position table) the compute
    dtype, as ComfyUI's fp8 models keep them; these dtypes are final (newer ComfyUI records them at construction).
    `load_dit_weights` fills it."""
    storage = dtype or torch.float32
    compute = compute_dtype or storage
    with torch.device("meta"):
        dit = DeepGenComfyDiT.from_config(config)
    mapping, modulation = _comfy_layer_classes(operations)
    for layer in dit.modules():
        if isinstance(layer, ModulationMixin):
            layer.__class__ = modulation
        elif type(layer) in mapping:
            layer.__class__ = mapping[type(layer)]
        for name, param in layer.named_parameters(recurse=False):
            param.data = param.data.to(storage if name == "weight" and hasattr(layer, "comfy_cast_weights") else compute)
        for name, buffer in layer.named_buffers(recurse=False):
            if buffer.is_floating_point():
                layer._buffers[name] = buffer.to(compute)
    dit.storage_dtype = storage
    return dit.requires_grad_(False).eval()


def load_dit_weights(dit: DeepGenComfyDiT, state: dict[str, torch.Tensor], what: str) -> None:
    """Fill the meta DiT with `state`, each tensor cast to the dtype `build_dit` gave its slot."""
    own = dit.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise DeepGenInputError(
            f"{what} does not fit DeepGen's DiT: missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shapes {wrong[:4]}. "
            "Pick a DeepGen / SD3.5-M DiT file (models/diffusion_models)."
        )
    dit.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, assign=True)
    dit.requires_grad_(False)


class DeepGenModelConfig(supported_models_base.BASE):
    """The model config ComfyUI reads: SD3 latents, flow sampling with DeepGen's shift, bf16/fp32 inference."""

    unet_config = {}  # noqa: RUF012 - ComfyUI's class attribute
    sampling_settings = {"shift": 3.0, "multiplier": 1000}  # noqa: RUF012
    latent_format = latent_formats.SD3
    memory_usage_factor = 1.2  # SD3's (the same DiT family); reference tokens count through memory_usage_factor_conds
    supported_inference_dtypes = [torch.bfloat16, torch.float32]  # noqa: RUF012 - fp16 overflows (trained in bf16)

    def __init__(self, transformer_config: dict, shift: float) -> None:
        super().__init__({"config": transformer_config, "in_channels": transformer_config.get("in_channels", 16)})
        self.sampling_settings["shift"] = float(shift)

    def get_model(self, state_dict: dict | None = None, prefix: str = "", device: Any = None) -> DeepGenNativeModel:
        return DeepGenNativeModel(self, device=device)


class DeepGenNativeModel(model_base.BaseModel):
    """`BaseModel` for DeepGen: FLOW (SD3 sampling), pooled vector as `y`, sequence as `c_crossattn` and the
    conditioning's `reference_latents` as `ref_latents` (moved to the DiT's latent space here, as Flux Kontext does)."""

    def __init__(self, model_config: DeepGenModelConfig, model_type: Any = model_base.ModelType.FLOW, device: Any = None) -> None:
        super().__init__(model_config, model_type, device=device, unet_model=build_dit)
        self.memory_usage_factor_conds = ("ref_latents",)

    def encode_adm(self, **kwargs: Any) -> torch.Tensor:
        pooled = kwargs.get("pooled_output")
        width = self.model_config.unet_config["config"]["pooled_projection_dim"]
        if pooled is None or pooled.shape[-1] != width:
            got = "none" if pooled is None else f"a {pooled.shape[-1]}-wide one"
            raise DeepGenInputError(
                f"the conditioning carries {got} pooled_output; DeepGen's DiT needs its {width}-wide SCB pooled vector. Encode with "
                "DeepGen's CLIP (DeepGen CLIP Loader -> CLIPTextEncode / DeepGen Text Encode (edit)) or DeepGen VLM Encode."
            )
        return pooled

    def extra_conds(self, **kwargs: Any) -> dict:
        out = super().extra_conds(**kwargs)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            width = self.model_config.unet_config["config"]["joint_attention_dim"]
            if cross_attn.shape[-1] != width:
                raise DeepGenInputError(f"the conditioning sequence is {cross_attn.shape[-1]} wide; DeepGen's DiT takes its {width}-wide SCB sequence. Encode with DeepGen's CLIP or DeepGen VLM Encode.")
            out["c_crossattn"] = comfy_conds.CONDRegular(cross_attn)  # lengths may differ: no padding (CONDRegular)
        references = kwargs.get("reference_latents")
        if references:
            out["ref_latents"] = comfy_conds.CONDList([self.process_latent_in(r) for r in references])
        return out

    def extra_conds_shapes(self, **kwargs: Any) -> dict:
        references = kwargs.get("reference_latents")
        if not references:
            return {}
        return {"ref_latents": [1, 16, sum(r.numel() for r in references) // 16]}


def model_dtypes(weight_dtype: str, weights: DiTWeights, load_device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(storage dtype, manual-cast compute dtype or None) the way ComfyUI's UNETLoader picks them."""
    supported = DeepGenModelConfig.supported_inference_dtypes
    storage = WEIGHT_DTYPES[weight_dtype]
    if storage is None:
        params = sum(t.numel() for t in weights.state.values())
        file_dtype = next((t.dtype for t in weights.state.values() if t.is_floating_point()), None)
        storage = model_management.unet_dtype(model_params=params, supported_dtypes=supported, weight_dtype=file_dtype)
    return storage, model_management.unet_manual_cast(storage, load_device, supported)


def native_model(weights: DiTWeights, weight_dtype: str = "default") -> Any:
    """A `ModelPatcher` over `DeepGenNativeModel` holding `weights`, ready for KSampler."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise DeepGenInputError(f"weight_dtype {weight_dtype!r} is not available; choose one of {list(WEIGHT_DTYPES)}.")
    load_device = model_management.get_torch_device()
    storage, manual_cast = model_dtypes(weight_dtype, weights, load_device)
    config = DeepGenModelConfig(weights.config, weights.shift)
    config.set_inference_dtype(storage, manual_cast)
    config.unet_config["compute_dtype"] = manual_cast or storage  # read by build_dit
    config.optimizations["fp8"] = weight_dtype == "fp8_e4m3fn_fast"
    model = config.get_model()
    load_dit_weights(model.diffusion_model, weights.state, f"DiT {weights.source.name}")
    patcher = model_patcher.ModelPatcher(model, load_device=load_device, offload_device=model_management.unet_offload_device())
    patcher.add_callback(model_patcher.CallbacksMP.ON_LOAD, _place_remaining_tensors)
    return patcher
