"""What a file or folder a user points at is, cheaply, for loaders that must choose a reader or explain a refusal."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from ..errors import CheckpointError

# Keys only a DeepGen checkpoint in the reference layout has (possibly under a `module.` / `model.` prefix).
_REFERENCE_MARKERS = ("meta_queries", "projector_1.weight")
EXPECTED = (
    "models/deepgen expects: a DeepGen-1.0-diffusers folder; the deepgen-encoder.safetensors of `deepgen convert` "
    "(or its folder); or a DeepGen stage checkpoint (model.pt, MR-GDPO_final.pt, iter_*.pth) with the "
    "Qwen2.5-VL-3B-Instruct and UniPic2-SD3.5M-Kontext folders beside it (docs/loading.md)"
)


def safetensors_keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError (no importable base class)
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}): it is truncated or damaged; copy it again.") from None


def is_reference_checkpoint(keys: list[str]) -> bool:
    return any(k.split(".", 1)[-1] in _REFERENCE_MARKERS or k in _REFERENCE_MARKERS for k in keys)


def describe_foreign(keys: list[str]) -> str:
    """A guess at what a non-DeepGen weights file is, from its keys."""
    joined = " ".join(keys[:200])
    for marker, what in (("model.diffusion_model.", "a Stable Diffusion / SDXL checkpoint"), ("transformer_blocks.", "a DiT (diffusion_models)"),
                         ("double_blocks.", "a Flux model"), ("lora_", "a LoRA"), ("decoder.up_blocks", "a VAE"),
                         ("encoder.layers", "a text encoder"), ("model.layers.", "a language model")):
        if marker in joined:
            return what
    return "not a DeepGen model file"


def not_deepgen(path: Path, keys: list[str]) -> CheckpointError:
    return CheckpointError(f"{path.name} is not a DeepGen model (it looks like {describe_foreign(keys)}); {EXPECTED}.")


def find_release_parts(folder: str | Path) -> tuple[Path, Path, Path]:
    """Locate a release layout gathered in one folder: the DeepGen checkpoint, the Qwen2.5-VL folder and the
    UniPic2 folder (any names), e.g. `deepgen/model.pt`, `deepgen/Qwen2.5-VL-3B-Instruct/`,
    `deepgen/UniPic2-SD3.5M-Kontext/`. Raises `CheckpointError` naming what is missing."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        from .diffusers_layout import pipeline_class_name

        raise CheckpointError(f"{folder} is a diffusers folder of {pipeline_class_name(folder)}, not a DeepGen model (a DeepGen-1.0-diffusers folder has connector/ and vlm/ beside transformer/).")
    checkpoints = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".pt", ".pth", ".bin", ".safetensors"))
    vlms = sorted(p for p in folder.iterdir() if (p / "config.json").is_file() and '"qwen2_5_vl"' in (p / "config.json").read_text())
    diffusions = sorted(p for p in folder.iterdir() if p.is_dir() and all((p / sub).is_dir() for sub in ("transformer", "vae", "scheduler")))
    missing = [what for what, found in (
        ("a DeepGen checkpoint (model.pt or *.safetensors)", checkpoints),
        ("the Qwen2.5-VL-3B-Instruct folder (config.json with model_type qwen2_5_vl)", vlms),
        ("the UniPic2-SD3.5M-Kontext folder (with transformer/, vae/, scheduler/)", diffusions),
    ) if len(found) != 1]
    if missing:
        raise CheckpointError(
            f"{folder} is not a DeepGen folder: it needs exactly one of each of: {'; '.join(missing)}. "
            "Gather the release files there, or run `deepgen convert` and use the converted files."
        )
    return checkpoints[0], vlms[0], diffusions[0]


def find_base_folders(folder: Path) -> tuple[Path, Path]:
    """The Qwen2.5-VL folder and the UniPic2 folder (transformer/, vae/, scheduler/) inside `folder`."""
    vlms, diffusions = [], []
    for entry in sorted(folder.iterdir()):
        config = entry / "config.json"
        if config.is_file():
            try:
                if json.loads(config.read_text()).get("model_type") == "qwen2_5_vl":
                    vlms.append(entry)
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
        elif entry.is_dir() and all((entry / sub).is_dir() for sub in ("transformer", "vae", "scheduler")) and not (entry / "connector").is_dir():
            diffusions.append(entry)
    if len(vlms) != 1 or len(diffusions) != 1:
        raise CheckpointError(
            f"a DeepGen stage checkpoint needs exactly one Qwen2.5-VL-3B-Instruct folder and one UniPic2-SD3.5M-Kontext "
            f"folder beside it in {folder} (found {len(vlms)} and {len(diffusions)}): download them there, or use the "
            "DeepGen-1.0-diffusers folder instead."
        )
    return vlms[0], diffusions[0]


def load_stage_checkpoint(path: Path, dtype, attn_implementation: str):
    """A DeepGen checkpoint file (reference layout: RL `model.pt`, SFT / pre-train `iter_*.pth`, `.safetensors`)
    over the base folders beside it; a non-DeepGen file is named as such before anything heavy is read."""
    from ..checkpoint import read_state_dict
    from ..loading import load_release

    keys = safetensors_keys(path) if path.suffix == ".safetensors" else list(read_state_dict(path))
    if not is_reference_checkpoint(keys):
        raise not_deepgen(path, keys)
    vlm, diffusion = find_base_folders(path.parent)
    return load_release(path, vlm, diffusion, dtype=dtype, attn_implementation=attn_implementation)
