"""DeepGenLoader: model files from ComfyUI's folders into ComfyUI's memory manager."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..deepgen_core.checkpoint import safetensors_metadata
from ..deepgen_core.errors import CheckpointError, DeepGenInputError
from ..deepgen_core.formats.detect import load_stage_checkpoint
from ..deepgen_core.formats.diffusers_layout import is_diffusers_layout, load_diffusers_layout
from ..deepgen_core.loading import (
    VAE_FILE,
    DeepGenComponents,
    default_attn_implementation,
    find_release_parts,
    is_converted,
    load_converted_encoder,
    load_converted_transformer,
    load_release,
    vae_file_metadata,
    vae_file_state,
)
from ..deepgen_core.presets import DEEPGEN_TINY_DIR
from ._comfy import comfy_sd, comfy_utils, folder_paths, io, model_management
from .choices import check_choices
from .model import DeepGenModel, make_patcher

FOLDER = "deepgen"
FROM_MODEL = "(from model)"
EMBEDDED = "DeepGen-Tiny (embedded)"  # the small trained model shipped in the package: the default choice
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ATTENTION = ["auto", "sdpa", "flash_attention_2", "eager"]
DeepGenModelType = io.Custom("DEEPGEN_MODEL")


def register_folder() -> None:
    """Add `models/deepgen` to the folders of the `deepgen` key, keeping paths that `extra_model_paths.yaml` added
    first, and list only weight files (a key made by the yaml alone would list every file)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
    paths, _ = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(folder_paths.supported_pt_extensions))


def _is_model_folder(path: Path) -> bool:
    if is_converted(path) or is_diffusers_layout(path):
        return True
    try:
        find_release_parts(path)
        return True
    except (CheckpointError, OSError):  # not a model folder, or unreadable: simply not offered
        return False


def _folder_bases() -> list[str]:
    """Where model folders are looked for: every `deepgen` path, then ComfyUI's `models/diffusers` (DeepGen
    diffusers folders only; that key lists folders, not files)."""
    diffusers = folder_paths.get_folder_paths("diffusers") if "diffusers" in folder_paths.folder_names_and_paths else []
    return folder_paths.get_folder_paths(FOLDER) + diffusers


def model_choices() -> list[str]:
    """Weight files and whole model folders (shown with a trailing `/`) under every `deepgen` path, and DeepGen
    diffusers folders in `models/diffusers`. Files inside model folders or inside HF folders (those with a
    config.json) are not offered on their own."""
    folders = []
    for base in _folder_bases():
        if os.path.isdir(base):
            in_deepgen = base in folder_paths.get_folder_paths(FOLDER)
            folders += [entry.name for entry in os.scandir(base) if entry.is_dir() and
                        (_is_model_folder(Path(entry.path)) if in_deepgen else is_diffusers_layout(entry.path))]
    files = [
        name for name in folder_paths.get_filename_list(FOLDER)
        if Path(name).parts[0] not in folders and not _inside_hf_folder(name)
    ]
    embedded = [EMBEDDED] if is_converted(DEEPGEN_TINY_DIR) else []
    return embedded + sorted(set(files)) + sorted(f"{name}/" for name in set(folders))


def _inside_hf_folder(name: str) -> bool:
    path = Path(folder_paths.get_full_path(FOLDER, name) or name)
    return (path.parent / "config.json").is_file()


def resolve_model(name: str) -> Path:
    if name == EMBEDDED:
        return DEEPGEN_TINY_DIR
    if name.endswith("/"):
        for base in _folder_bases():
            candidate = Path(base) / name.rstrip("/")
            if candidate.is_dir():
                return candidate
        raise DeepGenInputError(f"model folder {name!r} is not in any models/{FOLDER} folder; refresh the node list.")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise DeepGenInputError(f"model file {name!r} is not in any models/{FOLDER} folder; put it there (or list its folder in extra_model_paths.yaml) and refresh.")
    return Path(path)


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    return torch.bfloat16 if model_management.should_use_bf16(device) else torch.float32


def load_components(model_path: Path, transformer_name: str, dtype: torch.dtype, attention: str) -> DeepGenComponents:
    """The model's parts on the CPU; `vae` is set for every layout but the converted one (whose VAE file loads as
    a native VAE)."""
    attn = default_attn_implementation() if attention == "auto" else attention
    if is_diffusers_layout(model_path):
        components = load_diffusers_layout(model_path, dtype, attn)
    elif model_path.is_dir() and not is_converted(model_path):
        components = load_release(*find_release_parts(model_path), dtype=dtype, attn_implementation=attn)
    elif not is_converted(model_path):  # a stage checkpoint over the base folders beside it, or not DeepGen at all
        components = load_stage_checkpoint(model_path, dtype, attn)
    else:
        component = None if model_path.is_dir() else safetensors_metadata(model_path).get("component")
        if component in ("transformer", "vae"):
            home = {"transformer": "models/diffusion_models (pick it in `transformer_name`)", "vae": "models/vae (pick it in `vae_name`)"}[component]
            raise DeepGenInputError(f"{model_path.name} is the DeepGen {component} file of `deepgen convert`: it belongs in {home}; pick the encoder file (deepgen-encoder.safetensors) here.")
        if transformer_name == FROM_MODEL and not model_path.is_dir():
            raise DeepGenInputError(
                f"{model_path.name} holds only the VLM + SCB part: pick the DiT file (deepgen convert writes "
                "deepgen-transformer.safetensors; put it in models/diffusion_models) in `transformer_name`."
            )
        tokenizer, encoder = load_converted_encoder(model_path, dtype, attn)
        components = DeepGenComponents(tokenizer, encoder, None, None, None)
        if transformer_name == FROM_MODEL:
            components.transformer, components.scheduler = load_converted_transformer(model_path, dtype)
    if transformer_name != FROM_MODEL:
        dit_path = folder_paths.get_full_path_or_raise("diffusion_models", transformer_name)
        components.transformer, components.scheduler = load_converted_transformer(dit_path, dtype)
    return components


def load_vae(vae_name: str, model_path: Path, components: DeepGenComponents):
    """The native ComfyUI VAE: from a `models/vae` file exactly as VAELoader does, or from the model folder."""
    if vae_name != FROM_MODEL:
        state, metadata = comfy_utils.load_torch_file(folder_paths.get_full_path_or_raise("vae", vae_name), safe_load=True, return_metadata=True)
        return comfy_sd.VAE(sd=state, metadata=metadata)
    if components.vae is not None:
        return comfy_sd.VAE(sd=vae_file_state(components.vae), metadata=vae_file_metadata(components.vae))
    if model_path.is_dir():
        state, metadata = comfy_utils.load_torch_file(str(model_path / VAE_FILE), safe_load=True, return_metadata=True)
        return comfy_sd.VAE(sd=state, metadata=metadata)
    raise DeepGenInputError(f"{model_path.name} carries no VAE: pick the SD3 VAE file (models/vae) in `vae_name`.")


class DeepGenLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenLoader",
            display_name="DeepGen Loader",
            category="DeepGen/loaders",
            description="Loads DeepGen 1.0 (Qwen2.5-VL + SCB + SD3.5-M DiT) from local files into ComfyUI's memory manager. Nothing is downloaded.",
            inputs=[
                io.Combo.Input("model_name", options=model_choices(), tooltip="models/deepgen: a DeepGen-1.0-diffusers folder (also found in models/diffusers; about 15 GB in bf16), the VLM + SCB file from `deepgen convert` (deepgen-encoder.safetensors), a converted folder, or a stage checkpoint (model.pt, iter_*.pth) beside its Qwen2.5-VL-3B and UniPic2 folders. 'DeepGen-Tiny (embedded)': the 19 MB demo model of the pack (128 px shapes, edits and words), listed when its weights are installed in deepgen_core/assets/deepgen-tiny."),
                io.Combo.Input("transformer_name", options=[FROM_MODEL] + folder_paths.get_filename_list("diffusion_models"), tooltip="models/diffusion_models: the DeepGen DiT (deepgen-transformer.safetensors, about 4.5 GB in bf16). '(from model)' uses the one in the model folder."),
                io.Combo.Input("vae_name", options=[FROM_MODEL] + folder_paths.get_filename_list("vae"), tooltip="models/vae: the SD3 VAE (16 latent channels). '(from model)' uses the one in the model folder."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto", tooltip="Weight and compute dtype. auto: bf16 where the GPU supports it, else fp32. fp16 may overflow (DeepGen was trained in bf16)."),
                io.Combo.Input("attention", options=ATTENTION, default="auto", tooltip="VLM attention backend. auto: flash-attn when installed on a GPU, else PyTorch SDPA."),
            ],
            outputs=[
                DeepGenModelType.Output("MODEL", display_name="model", tooltip="VLM + SCB and DiT, managed by ComfyUI (Unload Models and low-VRAM modes apply)."),
                io.Vae.Output("VAE", display_name="vae", tooltip="The SD3 VAE as a native VAE: use VAEDecode / VAEEncode with it."),
            ],
        )

    @classmethod
    def validate_inputs(cls, dtype: str = "auto", attention: str = "auto") -> bool | str:
        return check_choices(dtype=(dtype, list(DTYPES)), attention=(attention, ATTENTION))  # nodes/choices.py says why

    @classmethod
    def fingerprint_inputs(cls, model_name: str, transformer_name: str, vae_name: str, **_) -> tuple:
        """Reload when a chosen file is overwritten in place."""
        def mtime(key: str, name: str) -> float | None:
            path = folder_paths.get_full_path(key, name) if name != FROM_MODEL and not name.endswith("/") else None
            return os.path.getmtime(path) if path else None
        return (mtime(FOLDER, model_name), mtime("diffusion_models", transformer_name), mtime("vae", vae_name))

    @classmethod
    def execute(cls, model_name: str, transformer_name: str, vae_name: str, dtype: str = "auto", attention: str = "auto") -> io.NodeOutput:
        model_path = resolve_model(model_name)
        encoder_device, dit_device = model_management.text_encoder_device(), model_management.get_torch_device()
        torch_dtype = pick_dtype(dtype, dit_device)
        parts = load_components(model_path, transformer_name, torch_dtype, attention)
        vae = load_vae(vae_name, model_path, parts)
        model = DeepGenModel(
            encoder=make_patcher(parts.encoder, torch_dtype, encoder_device, model_management.text_encoder_offload_device()),
            transformer=make_patcher(parts.transformer, torch_dtype, dit_device, model_management.unet_offload_device()),
            tokenizer=parts.tokenizer, scheduler=parts.scheduler, name=model_name,
        )
        return io.NodeOutput(model, vae)
