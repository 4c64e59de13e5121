"""Building DeepGen components from local files: the release layout and our converted safetensors layout.

Release layout (reference notes §7.1): a DeepGen checkpoint (`model.pt` / `.safetensors`) + the base
Qwen2.5-VL folder + the UniPic2-SD3.5M-Kontext folder (`transformer/`, `vae/`, `scheduler/`).
Converted layout (`deepgen convert`): three self-describing safetensors files whose metadata carries every
config and the tokenizer, so each file loads alone (ComfyUI puts them in `deepgen/`, `diffusion_models/`, `vae/`).
The authors' DeepGen-1.0-diffusers folder and mmengine `.pth` stage checkpoints are read in `formats/`.
Nothing here ever reaches a network: every `from_pretrained` is `local_files_only`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLModel,
)

from .checkpoint import (
    DeepGenStateDict,
    convert_reference_state_dict,
    group_keys,
    infer_config,
    load_config_file,
    merge_vlm_lora,
    read_state_dict,
    safetensors_metadata,
)
from .config import DeepGenConfig
from .errors import CheckpointError
from .formats.files import honour_umask
from .formats.detect import find_release_parts  # noqa: F401  (re-exported: the release folder finder)
from .formats.vlm import load_vlm
from .models.tiny_vae import TINY_LATENT_CHANNELS, DeepGenTinyVAE
from .models.transformer import DeepGenSD3Transformer
from .models.vlm import DeepGenEncoder
from .vae_layout import (
    comfy_taesd_to_state_dict,
    infer_taesd_config,
    is_comfy_taesd,
    state_dict_to_comfy_taesd,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
ENCODER_FILE, TRANSFORMER_FILE, VAE_FILE = "deepgen-encoder.safetensors", "deepgen-transformer.safetensors", "deepgen-vae.safetensors"
INDEX_FILE = "deepgen.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja")


@dataclass
class DeepGenComponents:
    tokenizer: PreTrainedTokenizerBase
    encoder: DeepGenEncoder
    transformer: DeepGenSD3Transformer
    vae: AutoencoderKL | DeepGenTinyVAE
    scheduler: FlowMatchEulerDiscreteScheduler


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating weights. diffusers' `ModelMixin.to` warns about `_keep_in_fp32_modules` even when a model
    has none (SD3/VAE), so the plain `nn.Module.to` is used."""
    return torch.nn.Module.to(module, dtype=dtype)


def default_attn_implementation() -> str:
    """flash-attn when it is installed and a GPU is present, else SDPA (both give pad rows zero output, §2.3)."""
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else "sdpa"


def _require_dir(path: str | Path | None, what: str, hint: str) -> Path:
    if path is None:
        raise CheckpointError(f"{what} folder is required: {hint}")
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{what} folder {str(path)!r} does not exist or is not a folder: {hint}")
    if not any(path.iterdir()):
        raise CheckpointError(f"{what} folder {path} is empty: {hint}")
    return path


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, partial: bool = False) -> None:
    """Load `state` into `module`, failing with the offending keys grouped by module.

    `partial=False`: every module tensor must be in `state` (strict). `partial=True`: `state` overlays some of
    them (pretrain files, VLM overrides). Unexpected keys and shape mismatches are errors either way. Modules
    built on the meta device take the file's tensors directly and must end with nothing left on meta.
    """
    own = module.state_dict()
    missing = [] if partial else [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys [{group_keys(missing)}]")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys [{group_keys(unexpected)}]")
        if wrong:
            parts.append(f"shape mismatch in {len(wrong)} tensors (first: {wrong[0]})")
        raise CheckpointError(f"{what} does not fit the model config: {'; '.join(parts)}.")
    module.load_state_dict(state, strict=False, assign=any(p.is_meta for p in module.parameters()))
    meta = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if meta:
        raise CheckpointError(f"{what} left {len(meta)} tensors unloaded [{group_keys(meta)}].")


def build_encoder(vlm: Qwen2_5_VLModel, config: DeepGenConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype, what: str = "the DeepGen bridge weights") -> DeepGenEncoder:
    # Build the bridge on the meta device (no random init of 0.4 B parameters), then take the file's tensors.
    with torch.device("meta"):
        encoder = DeepGenEncoder(vlm, config, vlm.config._attn_implementation)
    load_state_checked(encoder, {**{f"vlm.{k}": v for k, v in vlm.state_dict().items()}, **weights}, what)
    return cast(encoder, dtype)


# --------------------------------------------------------------------------------------------- release layout


def load_release(
    checkpoint: str | Path,
    vlm: str | Path | None,
    diffusion: str | Path | None,
    config: DeepGenConfig | str | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    attn_implementation: str | None = None,
    lora_alpha: float = 128.0,
) -> DeepGenComponents:
    """Build DeepGen from a DeepGen checkpoint over the base Qwen2.5-VL and UniPic2-SD3.5M-Kontext folders."""
    ckpt_path = Path(checkpoint)
    vlm_dir = _require_dir(vlm, "the Qwen2.5-VL", "pass the local Qwen2.5-VL-3B-Instruct folder (config.json, *.safetensors, tokenizer files).")
    diff_dir = _require_dir(diffusion, "the diffusion", "pass the local UniPic2-SD3.5M-Kontext folder with transformer/, vae/ and scheduler/.")
    for sub in ("transformer", "vae", "scheduler"):
        if not (diff_dir / sub).is_dir():
            raise CheckpointError(f"the diffusion folder {diff_dir} has no {sub}/ subfolder; it must hold transformer/, vae/ and scheduler/.")
    if isinstance(config, (str, Path)):
        config = load_config_file(config)
    elif config is None:
        sibling = (ckpt_path if ckpt_path.is_dir() else ckpt_path.parent) / "deepgen_config.json"
        config = load_config_file(sibling) if sibling.is_file() else None

    parts: DeepGenStateDict = convert_reference_state_dict(read_state_dict(ckpt_path))
    logger.info("checkpoint %s: %s", ckpt_path, parts.summary())
    attn = attn_implementation or default_attn_implementation()
    tokenizer = load_tokenizer(vlm_dir)
    vlm_model = load_vlm(vlm_dir, dtype, attn)
    if parts.vlm:
        load_state_checked(vlm_model, parts.vlm, "the checkpoint's VLM weights", partial=True)
    merge_vlm_lora(vlm_model, parts.vlm_lora, alpha=lora_alpha)
    if not parts.vlm_lora:
        logger.info("checkpoint has no VLM LoRA: the base VLM is used, exactly as the reference does for such files (§7.3)")
    cfg = infer_config(parts.encoder, vlm_model.config.text_config.num_hidden_layers, config)
    encoder = build_encoder(vlm_model, cfg, parts.encoder, dtype)
    transformer = _load_release_transformer(diff_dir / "transformer", parts.transformer, dtype)
    vae = AutoencoderKL.from_pretrained(diff_dir / "vae", torch_dtype=dtype, local_files_only=True)
    if parts.vae:
        load_state_checked(vae, parts.vae, "the checkpoint's VAE weights")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(diff_dir / "scheduler", local_files_only=True)
    return DeepGenComponents(tokenizer, encoder.eval(), transformer.eval(), vae.eval(), scheduler)


def _load_release_transformer(folder: Path, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> DeepGenSD3Transformer:
    config = DeepGenSD3Transformer.load_config(folder, local_files_only=True)
    if weights and len(weights) >= 10:
        # SFT / RL checkpoints carry the whole DiT: skip reading the base weights (they would be overwritten).
        with torch.device("meta"):
            transformer = DeepGenSD3Transformer.from_config(config)
        load_state_checked(transformer, weights, "the checkpoint's DiT weights")
        return cast(transformer, dtype)
    # Pretrain checkpoints hold only the pos-embed buffer (DiT frozen): overlay it on the base DiT.
    transformer = DeepGenSD3Transformer.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    if weights:
        load_state_checked(transformer, weights, "the checkpoint's DiT tensors", partial=True)
    return transformer


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"no usable tokenizer in {folder} ({exc}); the Qwen2.5-VL folder must hold tokenizer.json.") from exc
    tokenizer.padding_side = "left"  # every reference call pads on the left (notes §2.1)
    return tokenizer


# --------------------------------------------------------------------------------------------- converted layout


def save_converted(components: DeepGenComponents, out_dir: str | Path, dtype: torch.dtype | None = torch.bfloat16) -> dict[str, Path]:
    """Write the three self-describing safetensors files (+ a small index) atomically into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc = components.encoder
    with tempfile.TemporaryDirectory() as tmp:
        components.tokenizer.save_pretrained(tmp)
        tokenizer_files = {n: (Path(tmp) / n).read_text() for n in TOKENIZER_FILES if (Path(tmp) / n).is_file()}
    common = {"deepgen_format": FORMAT_VERSION}
    files = {
        ENCODER_FILE: (
            enc.state_dict(),
            {**common, "component": "encoder", "deepgen_config": json.dumps(enc.config.to_dict()),
             "vlm_config": enc.vlm.config.to_json_string(use_diff=False), "tokenizer": json.dumps(tokenizer_files)},
        ),
        TRANSFORMER_FILE: (
            components.transformer.state_dict(),
            {**common, "component": "transformer", "transformer_config": config_json(components.transformer.config),
             "scheduler_config": config_json(components.scheduler.config)},
        ),
        VAE_FILE: (vae_file_state(components.vae), {**common, **vae_file_metadata(components.vae)}),
    }
    written = {}
    for name, (state, meta) in files.items():
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in state.items()}
        written[name] = atomic_save_safetensors(state, out / name, meta)
    (out / INDEX_FILE).write_text(json.dumps({"deepgen_format": FORMAT_VERSION, "encoder": ENCODER_FILE, "transformer": TRANSFORMER_FILE, "vae": VAE_FILE}, indent=1))
    return written


def config_json(config) -> str:
    """A diffusers config as the JSON our safetensors metadata carries."""
    # diffusers configs carry the source path (`_name_or_path`), which is neither portable nor needed.
    return json.dumps({k: v for k, v in dict(config).items() if k != "_name_or_path"})


def atomic_save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves a half file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Tied/shared tensors must be stored once per key for safetensors.
    save_file({k: v.detach().cpu().clone() if _shares_storage(v, state) else v.detach().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    honour_umask(tmp)  # safetensors writes 0600: another user's ComfyUI could not read the file
    os.replace(tmp, path)
    return path


def _shares_storage(t: torch.Tensor, state: dict[str, torch.Tensor]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return sum(1 for v in state.values() if v.untyped_storage().data_ptr() == ptr) > 1


def _component_file(path: Path, component: str) -> Path:
    if path.is_file():
        return path
    index = path / INDEX_FILE
    if not index.is_file():
        return path / {"encoder": ENCODER_FILE, "transformer": TRANSFORMER_FILE, "vae": VAE_FILE}[component]
    try:
        return path / json.loads(index.read_text())[component]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is broken ({type(exc).__name__}: {exc}); run `deepgen convert` again, or delete it to use the default file names.") from None


def _read_converted(path: Path, component: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"converted {component} file {path} does not exist; run `deepgen convert` or check the path.")
    meta = safetensors_metadata(path)
    if meta.get("component") != component:
        found = meta.get("component", "no DeepGen metadata")
        raise CheckpointError(f"{path} is not a DeepGen {component} file (it says: {found}). Pick the {component} file.")
    return read_state_dict(path), meta


def load_converted_encoder(path: str | Path, dtype: torch.dtype, attn_implementation: str | None = None) -> tuple[PreTrainedTokenizerBase, DeepGenEncoder]:
    state, meta = _read_converted(_component_file(Path(path), "encoder"), "encoder")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in json.loads(meta["tokenizer"]).items():
            (Path(tmp) / name).write_text(text)
        tokenizer = load_tokenizer(tmp)
    vlm_config = Qwen2_5_VLConfig.from_dict(json.loads(meta["vlm_config"]))
    vlm_state = {k[len("vlm.") :]: v for k, v in state.items() if k.startswith("vlm.")}
    vlm = Qwen2_5_VLModel.from_pretrained(
        None, config=vlm_config, state_dict=vlm_state, dtype=dtype, attn_implementation=attn_implementation or default_attn_implementation()
    )
    config = DeepGenConfig.from_dict(json.loads(meta["deepgen_config"]))
    encoder = build_encoder(vlm, config, {k: v for k, v in state.items() if not k.startswith("vlm.")}, dtype)
    return tokenizer, encoder.eval()


def load_converted_transformer(path: str | Path, dtype: torch.dtype) -> tuple[DeepGenSD3Transformer, FlowMatchEulerDiscreteScheduler]:
    state, meta = _read_converted(_component_file(Path(path), "transformer"), "transformer")
    with torch.device("meta"):
        transformer = DeepGenSD3Transformer.from_config(json.loads(meta["transformer_config"]))
    load_state_checked(transformer, state, f"DiT file {path}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(json.loads(meta["scheduler_config"]))
    return cast(transformer, dtype).eval(), scheduler


def vae_file_state(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a VAE file: diffusers keys for `AutoencoderKL`, ComfyUI's TAESD layout for the tiny VAE
    (so the one file loads in ComfyUI's VAELoader and in ours)."""
    return state_dict_to_comfy_taesd(vae.state_dict()) if isinstance(vae, DeepGenTinyVAE) else vae.state_dict()


def vae_file_metadata(vae: torch.nn.Module) -> dict[str, str]:
    return {"component": "vae", "vae_config": config_json(vae.config)}


def save_vae_file(vae: torch.nn.Module, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write one self-describing VAE file atomically (the converted layout's VAE file, alone).

    Args:
        vae: `AutoencoderKL` or `DeepGenTinyVAE`.
        dtype: cast floating tensors (e.g. torch.float16); None keeps them.
    """
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in vae_file_state(vae).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save_safetensors(state, path, {"deepgen_format": FORMAT_VERSION, **vae_file_metadata(vae)})


def vae_from_state(state: dict[str, torch.Tensor], config: dict | None, what: str, latent_channels: int | None = TINY_LATENT_CHANNELS) -> torch.nn.Module:
    """Build the VAE a state dict describes: the tiny VAE for ComfyUI TAESD keys (config from `config` or the
    keys), else `AutoencoderKL` from `config`.

    Args:
        latent_channels: required latent channels (the SD3 latent space: 16); None skips the check.
    """
    if is_comfy_taesd(state):
        config = config or infer_taesd_config(state)
        state = comfy_taesd_to_state_dict(state, what)
        cls = DeepGenTinyVAE
    elif config is None:
        raise CheckpointError(f"{what} is neither a DeepGen VAE file nor a ComfyUI TAESD file; pick the VAE written by `deepgen convert` or `deepgen train vae`.")
    else:
        cls = AutoencoderKL
    found = config.get("latent_channels")
    if latent_channels is not None and found != latent_channels:
        raise CheckpointError(
            f"{what} has {found} latent channels, but DeepGen's DiT works in the {latent_channels}-channel SD3 latent "
            "space; pick a 16-channel VAE (the SD3 VAE, or a tiny VAE from `deepgen train vae`)."
        )
    # AutoencoderTiny registers `block_out_channels` beside its init arguments; from_config would warn about it.
    accepted = inspect.signature(cls.__init__).parameters
    with torch.device("meta"):
        vae = cls.from_config({k: v for k, v in config.items() if k in accepted or k.startswith("_")})
    load_state_checked(vae, state, what)
    return vae


def load_vae_file(path: str | Path, dtype: torch.dtype = torch.float32, latent_channels: int | None = TINY_LATENT_CHANNELS) -> torch.nn.Module:
    """A VAE from one file: a DeepGen VAE file (either layout) or a plain ComfyUI TAESD file.

    Args:
        path: the `.safetensors` file.
        latent_channels: required latent channels (16 for DeepGen); None skips the check.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"VAE file {path} does not exist; check the path.")
    meta = safetensors_metadata(path) if path.suffix == ".safetensors" else {}
    if meta.get("component", "vae") != "vae":
        raise CheckpointError(f"{path} is a DeepGen {meta['component']} file, not a VAE; pick the VAE file.")
    config = json.loads(meta["vae_config"]) if "vae_config" in meta else None
    return cast(vae_from_state(read_state_dict(path), config, f"VAE file {path}", latent_channels), dtype).eval()


def load_converted_vae(path: str | Path, dtype: torch.dtype) -> AutoencoderKL | DeepGenTinyVAE:
    state, meta = _read_converted(_component_file(Path(path), "vae"), "vae")
    return cast(vae_from_state(state, json.loads(meta["vae_config"]), f"VAE file {path}"), dtype).eval()


def is_converted(path: str | Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return (path / INDEX_FILE).is_file() or (path / ENCODER_FILE).is_file()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return "deepgen_format" in safetensors_metadata(path)
    except Exception:  # not readable as safetensors: let read_state_dict diagnose it
        return False


def load_converted(path: str | Path, dtype: torch.dtype = torch.bfloat16, attn_implementation: str | None = None) -> DeepGenComponents:
    tokenizer, encoder = load_converted_encoder(path, dtype, attn_implementation)
    transformer, scheduler = load_converted_transformer(path, dtype)
    return DeepGenComponents(tokenizer, encoder, transformer, load_converted_vae(path, dtype), scheduler)
