"""Loaders and the edit encoder of the native stack: DeepGen's DiT as MODEL, its VLM + SCB as CLIP, its VAE as VAE.

With these, KSampler (any sampler and scheduler), ModelSamplingSD3, LoraLoaderModelOnly, TorchCompileModel,
CLIPTextEncode, ReferenceLatent and VAEDecode drive DeepGen like any built-in model. The one-box DeepGen Loader /
DeepGen Sampler path is unchanged; conditioning flows between the two stacks.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..deepgen_core.errors import DeepGenInputError
from ..deepgen_core.image_processing import channels_last_to_pil, prepare_reference, to_channels_last
from ..deepgen_core.loading import DeepGenComponents, is_converted, load_converted_encoder
from ..deepgen_core.native_dit import DiTWeights, read_dit
from ._comfy import folder_paths, io, model_management, node_helpers
from .choices import unknown_choice
from .conditioning import MAX_REFERENCES, RESIZE_POLICIES, RESIZE_TOOLTIP
from .loading import EMBEDDED, FOLDER, FROM_MODEL, _is_model_folder, load_components, load_vae, pick_dtype, resolve_model
from .native_clip import DeepGenTokenizer, native_clip
from .native_model import WEIGHT_DTYPES, native_model

CLIP_DTYPES = ["auto", "bf16", "fp32"]


def _model_folders() -> list[str]:
    """Converted or release DeepGen folders under models/deepgen, as `name/`."""
    names = set()
    for base in folder_paths.get_folder_paths(FOLDER):
        if os.path.isdir(base):
            names |= {f"{e.name}/" for e in os.scandir(base) if e.is_dir() and _is_model_folder(Path(e.path))}
    return sorted(names)


def _embedded() -> list[str]:
    return [EMBEDDED] if is_converted(resolve_model(EMBEDDED)) else []


def dit_choices() -> list[str]:
    return _embedded() + folder_paths.get_filename_list("diffusion_models") + _model_folders()


def clip_choices() -> list[str]:
    return _embedded() + folder_paths.get_filename_list("text_encoders") + _model_folders()


def vae_choices() -> list[str]:
    return _embedded() + folder_paths.get_filename_list("vae") + _model_folders()


def _mtime(key: str, name: str) -> float | None:
    """Modification time of a model-folder file, so that loaders reload a file overwritten in place."""
    if name == EMBEDDED or name.endswith("/"):
        return None
    path = folder_paths.get_full_path(key, name)
    return os.path.getmtime(path) if path else None


def _release_folder(path: Path) -> bool:
    return path.is_dir() and not is_converted(path)


def dit_weights(name: str) -> DiTWeights:
    """The DiT named in the loader: a models/diffusion_models file (or a file in a diffusers transformer/ folder
    there), the embedded DeepGen-Tiny, or a DeepGen folder of models/deepgen."""
    if name == EMBEDDED or name.endswith("/"):
        path = resolve_model(name)
        if _release_folder(path):  # the release's DiT is UniPic2's with DeepGen's trained weights laid over it
            parts = load_components(path, FROM_MODEL, torch.float32, "auto")
            config = {k: v for k, v in dict(parts.transformer.config).items() if not k.startswith("_")}
            return DiTWeights(parts.transformer.state_dict(), config, float(parts.scheduler.config.get("shift", 3.0)), path)
        return read_dit(path)
    return read_dit(folder_paths.get_full_path_or_raise("diffusion_models", name))


def load_encoder(name: str, dtype: torch.dtype, attention: str = "auto") -> tuple:
    """(tokenizer, encoder) from a models/text_encoders file, the embedded DeepGen-Tiny or a DeepGen folder."""
    te_path = None if name == EMBEDDED or name.endswith("/") else folder_paths.get_full_path("text_encoders", name)
    path = Path(te_path) if te_path else resolve_model(name)
    if _release_folder(path):
        parts = load_components(path, FROM_MODEL, dtype, attention)
        return parts.tokenizer, parts.encoder
    return load_converted_encoder(path, dtype, None if attention == "auto" else attention)


class DeepGenDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenDiTLoader",
            display_name="DeepGen DiT Loader (MODEL)",
            category="DeepGen/native",
            description="Loads DeepGen's DiT as a native MODEL for KSampler: SD3 flow sampling (shift 3; ModelSamplingSD3 changes it), LoRA loaders, TorchCompileModel and ComfyUI's memory management apply. Condition it with DeepGen's CLIP (CLIPTextEncode / DeepGen Text Encode (edit)) or DeepGen VLM Encode.",
            inputs=[
                io.Combo.Input("dit_name", options=dit_choices(), tooltip="models/diffusion_models: DeepGen's DiT file (deepgen-transformer.safetensors, about 4.5 GB in bf16) or the weight file of a diffusers transformer/ folder with its config.json; a DeepGen folder of models/deepgen (name/); or the embedded DeepGen-Tiny."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", tooltip="Storage dtype of the DiT's linear weights. default: as ComfyUI picks for the device; fp8 halves the memory of bf16 (computed in bf16/fp32, slightly lossy); fp8_e4m3fn_fast also multiplies in fp8 on GPUs that support it."),
            ],
            outputs=[io.Model.Output("MODEL", display_name="model", tooltip="DeepGen's DiT as a native MODEL (connect KSampler, LoRA loaders, ModelSamplingSD3).")],
        )

    @classmethod
    def validate_inputs(cls, weight_dtype: str = "default") -> bool | str:
        return unknown_choice("weight_dtype", weight_dtype, list(WEIGHT_DTYPES)) or True

    @classmethod
    def fingerprint_inputs(cls, dit_name: str, **_) -> float | None:
        return _mtime("diffusion_models", dit_name)

    @classmethod
    def execute(cls, dit_name: str, weight_dtype: str = "default") -> io.NodeOutput:
        return io.NodeOutput(native_model(dit_weights(dit_name), weight_dtype))


class DeepGenCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenCLIPLoader",
            display_name="DeepGen CLIP Loader (VLM + SCB)",
            category="DeepGen/native",
            description="Loads DeepGen's Qwen2.5-VL + think tokens + SCB bridge as a native CLIP: CLIPTextEncode gives DeepGen conditioning for text-to-image; DeepGen Text Encode (edit) adds reference images.",
            inputs=[
                io.Combo.Input("clip_name", options=clip_choices(), tooltip="models/text_encoders: DeepGen's VLM + SCB file (deepgen-encoder.safetensors, about 8 GB in bf16); a DeepGen folder of models/deepgen (name/); or the embedded DeepGen-Tiny."),
                io.Combo.Input("dtype", options=CLIP_DTYPES, default="auto", tooltip="auto: bf16 where the device supports it, else fp32."),
            ],
            outputs=[io.Clip.Output("CLIP", display_name="clip", tooltip="DeepGen's text side as a native CLIP.")],
        )

    @classmethod
    def validate_inputs(cls, dtype: str = "auto") -> bool | str:
        return unknown_choice("dtype", dtype, CLIP_DTYPES) or True

    @classmethod
    def fingerprint_inputs(cls, clip_name: str, **_) -> float | None:
        return _mtime("text_encoders", clip_name)

    @classmethod
    def execute(cls, clip_name: str, dtype: str = "auto") -> io.NodeOutput:
        if message := unknown_choice("dtype", dtype, CLIP_DTYPES):
            raise DeepGenInputError(message)
        torch_dtype = pick_dtype(dtype, model_management.text_encoder_device())
        tokenizer, encoder = load_encoder(clip_name, torch_dtype)
        return io.NodeOutput(native_clip(encoder.eval(), tokenizer, torch_dtype))


class DeepGenVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenVAELoader",
            display_name="DeepGen VAE Loader",
            category="DeepGen/native",
            description="Loads DeepGen's VAE as ComfyUI's native VAE: from models/vae (as VAELoader does), from a DeepGen folder, or the embedded DeepGen-Tiny's.",
            inputs=[io.Combo.Input("vae_name", options=vae_choices(), tooltip="models/vae: the SD3 VAE (16 latent channels); a DeepGen folder of models/deepgen (name/); or the embedded DeepGen-Tiny's tiny VAE.")],
            outputs=[io.Vae.Output("VAE", display_name="vae", tooltip="A native VAE for VAEEncode / VAEDecode.")],
        )

    @classmethod
    def fingerprint_inputs(cls, vae_name: str, **_) -> float | None:
        return _mtime("vae", vae_name)

    @classmethod
    def execute(cls, vae_name: str) -> io.NodeOutput:
        if vae_name == EMBEDDED or vae_name.endswith("/"):
            path = resolve_model(vae_name)
            parts = load_components(path, FROM_MODEL, torch.float32, "auto") if _release_folder(path) else DeepGenComponents(None, None, None, None, None)
            return io.NodeOutput(load_vae(FROM_MODEL, path, parts))
        return io.NodeOutput(load_vae(vae_name, Path(), None))


class DeepGenTextEncodeEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        images = [io.Image.Input(f"image_{i}", optional=True, tooltip=f"Reference image {i} (every image of the batch is a reference) for the VLM.") for i in range(1, MAX_REFERENCES + 1)]
        return io.Schema(
            node_id="DeepGenTextEncodeEdit",
            display_name="DeepGen Text Encode (edit)",
            category="DeepGen/native",
            description="Encodes an edit instruction with up to four reference images through DeepGen's CLIP (the VLM sees the images). Encode the negative with the same images. The DiT sees the references through reference_latents: chain ReferenceLatent (VAEEncode of the same, resized images) on positive and negative, or give `vae` here to append them.",
            inputs=[
                io.Clip.Input("clip", tooltip="From DeepGen CLIP Loader."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, tooltip="The edit instruction (or the negative prompt)."),
                *images,
                io.Vae.Input("vae", optional=True, tooltip="Optional: VAE-encode the resized references and append them under reference_latents (as ReferenceLatent would)."),
                io.Combo.Input("reference_resize", options=RESIZE_POLICIES, default="dynamic", tooltip=RESIZE_TOOLTIP, optional=True),
                io.Int.Input("reference_size", default=512, min=64, max=4096, step=32, tooltip="Target size of the resize policy (the reference uses 512).", optional=True),
            ],
            outputs=[io.Conditioning.Output("CONDITIONING", display_name="conditioning", tooltip="DeepGen conditioning (sequence + pooled_output), with reference_latents when `vae` is given.")],
        )

    @classmethod
    def validate_inputs(cls, reference_resize: str = "dynamic") -> bool | str:
        return unknown_choice("reference_resize", reference_resize, RESIZE_POLICIES) or True

    @classmethod
    def execute(cls, clip, prompt: str, image_1=None, image_2=None, image_3=None, image_4=None, vae=None,
                reference_resize: str = "dynamic", reference_size: int = 512) -> io.NodeOutput:
        if not isinstance(getattr(clip, "tokenizer", None), DeepGenTokenizer):
            kind = type(getattr(clip, "tokenizer", clip)).__name__
            raise DeepGenInputError(f"clip is not DeepGen's CLIP (its tokenizer is a {kind}); load it with DeepGen CLIP Loader (the VLM + SCB file).")
        batches = [(i, b) for i, b in enumerate((image_1, image_2, image_3, image_4), start=1) if b is not None]
        images = [img for i, batch in batches for img in channels_last_to_pil(batch, name=f"image_{i}")]
        if not images:
            raise DeepGenInputError("DeepGen Text Encode (edit) got no image: connect at least image_1, or use CLIPTextEncode for text-to-image.")
        # the tokenizer checks the prompt (control tokens, token limit) and the resize settings before the VLM loads
        tokens = clip.tokenize(prompt, images=images, reference_resize=reference_resize, reference_size=reference_size, input_name="prompt")
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        if vae is not None:
            latents = [vae.encode(to_channels_last(prepare_reference(img, reference_resize, reference_size, name=f"reference image {k}")))
                       for k, img in enumerate(images)]
            conditioning = node_helpers.conditioning_set_values(conditioning, {"reference_latents": latents}, append=True)
        return io.NodeOutput(conditioning)


NATIVE_NODES: list[type[io.ComfyNode]] = [DeepGenDiTLoader, DeepGenCLIPLoader, DeepGenVAELoader, DeepGenTextEncodeEdit]
