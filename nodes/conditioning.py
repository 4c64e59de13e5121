"""Conditioning nodes: VLM + SCB encoding, think-token settings, reference latents."""

from __future__ import annotations

import torch

from ..deepgen_core.errors import DeepGenInputError
from ..deepgen_core.image_processing import (
    channels_last_to_pil,
    prepare_reference,
    to_channels_last,
)
from ..deepgen_core.validation import check_prompt_pair
from ._comfy import io, model_management, node_helpers
from .choices import check_choices
from .loading import DeepGenModelType
from .model import activation_estimate

# Marks a CONDITIONING entry as DeepGen's (VLM + SCB sequence, DiT pooled vector). Every DeepGen encoder sets it;
# stock nodes that copy an entry's dict (ReferenceLatent, ConditioningZeroOut) keep it.
DEEPGEN_MARKER = "deepgen"
RESIZE_POLICIES = ["dynamic", "fix_pixels", "none"]
MAX_REFERENCES = 4
THINK_MODES = ["all", "first_n", "off"]
RESIZE_TOOLTIP = "How references are resized before the VLM and the VAE see them. dynamic: longer side down to `reference_size` if larger; fix_pixels: area of reference_size² keeping the aspect; none: as is. Sides are rounded up to 32."


def _resize_inputs() -> list:
    return [
        io.Combo.Input("reference_resize", options=RESIZE_POLICIES, default="dynamic", tooltip=RESIZE_TOOLTIP, optional=True),
        io.Int.Input("reference_size", default=512, min=64, max=4096, step=32, tooltip="Target size of the resize policy (the reference uses 512). Larger references cost VLM and DiT time.", optional=True),
    ]


class DeepGenVLMEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        images = [io.Image.Input(f"image_{i}", optional=True, tooltip=f"Reference image {i} for editing (every image of the batch is a reference). Leave all empty for text-to-image.") for i in range(1, MAX_REFERENCES + 1)]
        return io.Schema(
            node_id="DeepGenVLMEncode",
            display_name="DeepGen VLM Encode (SCB)",
            category="DeepGen/conditioning",
            description="Runs the prompt, the negative prompt and the reference images through Qwen2.5-VL with the think tokens, stacks six hidden layers and bridges them to DiT conditioning (one VLM pass for both, as the reference does).",
            inputs=[
                DeepGenModelType.Input("model", tooltip="From DeepGen Loader (or DeepGen Think Tokens)."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, tooltip="What to generate, or the edit instruction."),
                io.String.Input("negative_prompt", multiline=True, default="", tooltip="Negative prompt for CFG. Empty with references: DeepGen's default edit negative is used (see `default_edit_negative`)."),
                *images,
                io.Boolean.Input("default_edit_negative", default=True, optional=True, tooltip="With references and an empty negative prompt, use the model's default edit negative: the reference implementation's quality negative prompt for DeepGen 1.0, none for DeepGen-Tiny."),
                *_resize_inputs(),
            ],
            outputs=[
                io.Conditioning.Output("POSITIVE", display_name="positive", tooltip="Prompt conditioning (sequence + pooled_output)."),
                io.Conditioning.Output("NEGATIVE", display_name="negative", tooltip="Negative conditioning, encoded in the same batch."),
            ],
        )

    @classmethod
    def validate_inputs(cls, reference_resize: str = "dynamic") -> bool | str:
        return check_choices(reference_resize=(reference_resize, RESIZE_POLICIES))  # nodes/choices.py says why

    @classmethod
    def execute(cls, model, prompt: str, negative_prompt: str, image_1=None, image_2=None, image_3=None, image_4=None,
                default_edit_negative: bool = True, reference_resize: str = "dynamic", reference_size: int = 512) -> io.NodeOutput:
        batches = [(i, b) for i, b in enumerate((image_1, image_2, image_3, image_4), start=1) if b is not None]
        images = [img for i, batch in batches for img in channels_last_to_pil(batch, name=f"image_{i}")]
        encoder = model.encoder.model.inner
        if images and not negative_prompt and default_edit_negative:
            negative_prompt = encoder.config.default_edit_negative
        check_prompt_pair(model.tokenizer, prompt, negative_prompt)  # control tokens, token limit: before the VLM loads
        tokens = 512 + sum(img.width * img.height for img in images) // (28 * 28)
        pipe = model.pipeline(model.encoder, memory_required=activation_estimate(2 * tokens, encoder.config.vlm_hidden_size, encoder.think_tokens.dtype))
        pixels = pipe.prepare_reference_pixels(images or None, 1, reference_resize, reference_size)
        model_management.throw_exception_if_processing_interrupted()
        embeds = pipe.encode_prompt([prompt], [negative_prompt], pixels, num_think_tokens=model.num_think_tokens)
        out = model_management.intermediate_device()
        positive = [[embeds.prompt_embeds.to(out), {"pooled_output": embeds.pooled_prompt_embeds.to(out), DEEPGEN_MARKER: True}]]
        negative = [[embeds.negative_prompt_embeds.to(out), {"pooled_output": embeds.negative_pooled_prompt_embeds.to(out), DEEPGEN_MARKER: True}]]
        return io.NodeOutput(positive, negative)


class DeepGenThinkTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenThinkTokens",
            display_name="DeepGen Think Tokens",
            category="DeepGen/conditioning",
            description="Returns a copy of the model that appends fewer (or none) of its learned think tokens, for inspection and ablation. Weights are shared; the input model is unchanged. Without this node all trained think tokens are used.",
            inputs=[
                DeepGenModelType.Input("model", tooltip="The model to copy with the new setting (not changed itself)."),
                io.Combo.Input("mode", options=THINK_MODES, default="all", tooltip="all: the trained behaviour; first_n: only the first `count` tokens; off: no think tokens."),
                io.Int.Input("count", default=64, min=0, max=4096, tooltip="Tokens kept in first_n mode (DeepGen 1.0 has 128)."),
            ],
            outputs=[DeepGenModelType.Output("MODEL", display_name="model", tooltip="The model with the think-token setting.")],
        )

    @classmethod
    def validate_inputs(cls, mode: str = "all") -> bool | str:
        return check_choices(mode=(mode, THINK_MODES))

    @classmethod
    def execute(cls, model, mode: str, count: int) -> io.NodeOutput:
        trained = model.trained_think_tokens
        if mode == "first_n" and count > trained:
            raise DeepGenInputError(f"count={count} exceeds the {trained} think tokens this model was trained with; use at most {trained}.")
        return io.NodeOutput(model.with_think_tokens({"all": None, "first_n": count, "off": 0}[mode]))


class DeepGenReferenceLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenReferenceLatent",
            display_name="DeepGen Reference Latent",
            category="DeepGen/conditioning",
            description="Resizes reference images by DeepGen's policy, VAE-encodes them and appends them to the conditioning under `reference_latents` (the key of the built-in ReferenceLatent; chain several for several references). Use the same resize settings as in DeepGen VLM Encode.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="Usually the positive output of DeepGen VLM Encode; the sampler uses its references for both CFG branches."),
                io.Image.Input("image", tooltip="Reference image(s); each image of the batch becomes one reference."),
                io.Vae.Input("vae", tooltip="The SD3 VAE (16 latent channels)."),
                *_resize_inputs(),
            ],
            outputs=[
                io.Conditioning.Output("CONDITIONING", display_name="conditioning", tooltip="The input conditioning with the references appended under reference_latents."),
                io.Latent.Output("LATENT", display_name="latent", tooltip="An empty latent at the first reference's resized size: the reference's default output size for edits."),
            ],
        )

    @classmethod
    def validate_inputs(cls, reference_resize: str = "dynamic") -> bool | str:
        return check_choices(reference_resize=(reference_resize, RESIZE_POLICIES))

    @classmethod
    def execute(cls, conditioning, image: torch.Tensor, vae, reference_resize: str = "dynamic", reference_size: int = 512) -> io.NodeOutput:
        channels = getattr(vae, "latent_channels", None)
        if channels != 16:
            raise DeepGenInputError(f"vae makes {channels}-channel latents; DeepGen needs the SD3 VAE (16 channels). Load the SD3/SD3.5 VAE or DeepGen's VAE.")
        latents = []
        for k, pil in enumerate(channels_last_to_pil(image, name="image")):
            pixels = prepare_reference(pil, reference_resize, reference_size, name=f"reference image {k}")
            model_management.throw_exception_if_processing_interrupted()
            latents.append(vae.encode(to_channels_last(pixels)))
        conditioning = node_helpers.conditioning_set_values(conditioning, {"reference_latents": latents}, append=True)
        empty = torch.zeros_like(latents[0], device=model_management.intermediate_device())
        return io.NodeOutput(conditioning, {"samples": empty})
