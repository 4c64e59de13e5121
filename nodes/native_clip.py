"""DeepGen's VLM + SCB as a native ComfyUI `CLIP`: CLIPTextEncode gives DeepGen conditioning.

The object is ComfyUI's own `comfy.sd.CLIP`, assembled the way its `clone` does (no `clip_target`: the text side
is a VLM with think tokens and the SCB bridge, not a CLIP tokenizer + transformer). Its `tokenize` keeps the
prompt text and any reference images (the chat template and the image token counts are only known at encode
time); its `cond_stage_model` runs the same `encode_prompt` as the one-box nodes, one prompt per call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..deepgen_core.errors import DeepGenInputError
from ..deepgen_core.image_processing import prepare_reference
from ..deepgen_core.pipeline import DeepGenPipeline
from ..deepgen_core.validation import check_number, check_prompts
from ._comfy import comfy_sd, model_management, model_patcher
from .conditioning import DEEPGEN_MARKER, RESIZE_POLICIES
from .model import ManagedModule, _place_remaining_tensors, use_comfy_layers

logger = logging.getLogger(__name__)

TOKENS_KEY = "deepgen"


@dataclass
class DeepGenPrompt:
    """What `CLIP.tokenize` returns for DeepGen, under `{"deepgen": [prompt]}`: the text, the reference images
    (PIL, before DeepGen's resize) and the resize policy."""

    text: str
    images: list[Image.Image] = field(default_factory=list)
    reference_resize: str = "dynamic"
    reference_size: int = 512


class DeepGenTokenizer:
    """The `tokenizer` of DeepGen's CLIP. Extra `tokenize` keywords (`images`, `reference_resize`,
    `reference_size`, `input_name`) reach it through `CLIP.tokenize(text, **kwargs)`, as Qwen-Image's `images=` does.

    Tokenizing checks what the DeepGen VLM Encode node checks, before the encoder loads: the prompt spells none
    of the model's control tokens and fits the token limit, and the resize settings are valid. `input_name` is
    the widget the errors name (CLIPTextEncode's `text` by default)."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer  # the VLM's (Hugging Face) tokenizer, for the prompt checks

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, images: list[Image.Image] | None = None,
                              reference_resize: str = "dynamic", reference_size: int = 512, input_name: str = "text",
                              **_: Any) -> dict[str, list[DeepGenPrompt]]:
        if not isinstance(text, str):
            raise DeepGenInputError(f"{input_name} must be a string, got {type(text).__name__}.")
        if self.tokenizer is not None:
            check_prompts(self.tokenizer, [text], input_name)
        if reference_resize not in RESIZE_POLICIES:
            raise DeepGenInputError(f"reference_resize {reference_resize!r} is not a resize policy; choose one of {RESIZE_POLICIES}.")
        reference_size = check_number("reference_size", reference_size, hint="The reference resizes to 512.")
        return {TOKENS_KEY: [DeepGenPrompt(text, list(images or []), reference_resize, reference_size)]}

    def state_dict(self) -> dict:
        return {}


class DeepGenTextEncoderModel(ManagedModule):
    """The `cond_stage_model` of DeepGen's CLIP: `encode_token_weights(tokens) -> (sequence, pooled, extras)`."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: Any, dtype: torch.dtype, load_device: torch.device) -> None:
        super().__init__(encoder, dtype)
        self.load_device = load_device
        self._pipeline = DeepGenPipeline(tokenizer, encoder, None, None, None)

    def reset_clip_options(self) -> None:
        """ComfyUI resets CLIP options (layer, pooled projection) before each encode; DeepGen has none."""

    def set_clip_options(self, options: dict) -> None:
        """`layer` (CLIPSetLastLayer) has no meaning for DeepGen's SCB (it stacks fixed VLM layers); newer ComfyUI
        also passes `execution_device`, the patcher's load device this module already runs on."""
        if "layer" in options:
            logger.warning("DeepGen's text encoder has no CLIP layers to pick; CLIPSetLastLayer does not apply to it.")

    def load_sd(self, state: dict[str, torch.Tensor]) -> Any:
        return self.inner.load_state_dict(state, strict=False)

    def encode_token_weights(self, tokens: dict[str, list[DeepGenPrompt]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        prompt = tokens[TOKENS_KEY][0]
        pipe = self._pipeline
        pipe.execution_device = self.load_device
        pipe.set_cuda_graphs(False if getattr(self, "model_lowvram", False) else "auto")  # streamed weights: nothing to replay
        # the resize of `prepare_reference_pixels`, without its DiT size check (the MODEL checks sizes itself)
        pixels = [[prepare_reference(img, prompt.reference_resize, prompt.reference_size, name=f"reference image {k}") for k, img in enumerate(prompt.images)]] if prompt.images else None
        model_management.throw_exception_if_processing_interrupted()
        embeds = pipe.encode_prompt([prompt.text], [], pixels)
        out = model_management.intermediate_device()
        return embeds.prompt_embeds.to(out), embeds.pooled_prompt_embeds.to(out), {DEEPGEN_MARKER: True}


def native_clip(encoder: torch.nn.Module, tokenizer: Any, dtype: torch.dtype) -> Any:
    """A `comfy.sd.CLIP` over DeepGen's encoder, managed like any text encoder (Unload Models, low-VRAM modes)."""
    load_device = model_management.text_encoder_device()
    module = DeepGenTextEncoderModel(encoder, tokenizer, dtype, load_device)
    use_comfy_layers(encoder)
    clip = comfy_sd.CLIP(no_init=True)
    clip.cond_stage_model = module
    clip.tokenizer = DeepGenTokenizer(tokenizer)
    clip.patcher = model_patcher.ModelPatcher(module, load_device=load_device, offload_device=model_management.text_encoder_offload_device())
    clip.patcher.add_callback(model_patcher.CallbacksMP.ON_LOAD, _place_remaining_tensors)
    clip.patcher.is_clip = True
    clip.layer_idx = None
    clip.use_clip_schedule = False
    clip.apply_hooks_to_conds = None
    clip.tokenizer_options = {}
    return clip
