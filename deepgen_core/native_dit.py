"""The DeepGen DiT as a host's own model: where its weights come from, and its fine-tunes as LoRA files.

Hosts with their own sampler stack (ComfyUI's MODEL) need the DiT's weights, its config and the flow shift
without the rest of DeepGen. `read_dit` finds them in any of the layouts a user has:

- the converted DiT file of `deepgen convert` (`deepgen-transformer.safetensors`, config in its metadata);
- a diffusers `transformer/` folder (`config.json` + `diffusion_pytorch_model*.safetensors`, sharded or not),
  or one of its weight files whose folder holds the `config.json`;
- a converted DeepGen folder (`deepgen.json` names the DiT file).

`extract_dit_lora` turns a fine-tuned DiT (e.g. the export of `deepgen train sft`) into a low-rank difference
against its base, in the key layout ComfyUI's LoRA loaders read (`diffusion_model.<module>.lora_A/B.weight`).
Nothing here imports a host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import read_state_dict, safetensors_metadata
from .errors import CheckpointError, DeepGenInputError
from .loading import INDEX_FILE, TRANSFORMER_FILE

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
DEFAULT_SHIFT = 3.0  # SD3.5-M's and DeepGen's flow shift
LORA_PREFIX = "diffusion_model."  # ComfyUI maps `diffusion_model.<module>` LoRA keys to every model's own weights


@dataclass
class DiTWeights:
    """A DiT's tensors (diffusers names), its `SD3Transformer2DModel` config and the scheduler's flow shift."""

    state: dict[str, torch.Tensor]
    config: dict
    shift: float
    source: Path


def _diffusers_folder(folder: Path) -> DiTWeights:
    config = json.loads((folder / "config.json").read_text())
    index = folder / DIFFUSERS_WEIGHTS[1]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {k: v for shard in shards for k, v in read_state_dict(folder / shard).items()}
    elif (folder / DIFFUSERS_WEIGHTS[0]).is_file():
        state = read_state_dict(folder / DIFFUSERS_WEIGHTS[0])
    else:
        raise CheckpointError(f"{folder} has a config.json but no {DIFFUSERS_WEIGHTS[0]} (or its sharded index); copy the transformer's weights there.")
    scheduler = folder.parent / "scheduler" / "scheduler_config.json"
    shift = json.loads(scheduler.read_text()).get("shift", DEFAULT_SHIFT) if scheduler.is_file() else DEFAULT_SHIFT
    return DiTWeights(state, {k: v for k, v in config.items() if not k.startswith("_")}, float(shift), folder)


def _converted_file(path: Path) -> DiTWeights:
    meta = safetensors_metadata(path)
    scheduler = json.loads(meta.get("scheduler_config", "{}"))
    return DiTWeights(read_state_dict(path), json.loads(meta["transformer_config"]), float(scheduler.get("shift", DEFAULT_SHIFT)), path)


def read_dit(path: str | Path) -> DiTWeights:
    """The DiT at `path`: a converted DiT file, a diffusers transformer folder or one of its weight files, or a
    converted DeepGen folder. Raises `CheckpointError` saying which layout was expected."""
    path = Path(path)
    if path.is_dir():
        if (path / INDEX_FILE).is_file() or (path / TRANSFORMER_FILE).is_file():
            name = json.loads((path / INDEX_FILE).read_text()).get("transformer", TRANSFORMER_FILE) if (path / INDEX_FILE).is_file() else TRANSFORMER_FILE
            return _converted_file(path / name)
        if (path / "transformer" / "config.json").is_file():
            return _diffusers_folder(path / "transformer")
        if (path / "config.json").is_file():
            return _diffusers_folder(path)
        raise CheckpointError(
            f"{path} is neither a converted DeepGen folder ({INDEX_FILE}) nor a diffusers transformer folder (config.json + "
            f"{DIFFUSERS_WEIGHTS[0]}); point at the DiT file or the folder holding it."
        )
    if not path.is_file():
        raise CheckpointError(f"DiT file {str(path)!r} does not exist; check the name (models/diffusion_models) and refresh.")
    if path.suffix == ".safetensors" and "transformer_config" in safetensors_metadata(path):
        return _converted_file(path)
    if (path.parent / "config.json").is_file():
        return _diffusers_folder(path.parent)
    raise CheckpointError(
        f"{path.name} carries no DiT config: it is neither a DeepGen DiT file (deepgen convert writes {TRANSFORMER_FILE}) nor a "
        "weight file inside a diffusers transformer/ folder with its config.json. Use one of those."
    )


def _low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B @ A the best rank-`rank` approximation of `delta` (out, in) in the Frobenius norm (SVD)."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r]


def extract_dit_lora(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], rank: int = 64, dtype: torch.dtype = torch.bfloat16,
                     min_change: float = 0.0) -> dict[str, torch.Tensor]:
    """A LoRA that turns the `base` DiT into (approximately) `tuned`, in ComfyUI's key layout.

    Every 2-D `.weight` that differs becomes `diffusion_model.<module>.lora_B.weight` (out, r) and `.lora_A.weight`
    (r, in) with `.alpha` = r (scale 1), so `W_base + B A` ≈ `W_tuned` (exact when r reaches the matrix rank).
    Other changed tensors (biases, norm weights, the position table) are stored whole as `.diff` / `.diff_b`, the
    weight-difference keys ComfyUI's LoRA loader adds as they are.

    Args:
        base, tuned: DiT state dicts with the same keys and shapes (diffusers names).
        rank: r of the low-rank factors; a larger r follows the fine-tune more closely, in a larger file.
        dtype: dtype of the stored factors and differences.
        min_change: skip tensors whose largest absolute change is at most this.

    Returns:
        The LoRA tensors; save with `safetensors.torch.save_file`.
    """
    if rank < 1:
        raise DeepGenInputError(f"rank must be >= 1, got {rank}.")
    mismatched = sorted(set(base) ^ set(tuned)) + [k for k in base if k in tuned and base[k].shape != tuned[k].shape]
    if mismatched:
        raise DeepGenInputError(f"the base and fine-tuned DiT differ in keys or shapes ({mismatched[:5]}...): extract against the DiT the fine-tune started from.")
    out = {}
    for key, weight in base.items():
        delta = tuned[key].float() - weight.float()
        if not delta.is_floating_point() or delta.abs().max() <= min_change:
            continue
        module, _, kind = key.rpartition(".")
        if kind == "weight" and delta.dim() == 2:
            up, down = _low_rank(delta, rank)
            name = LORA_PREFIX + module
            out[f"{name}.lora_B.weight"], out[f"{name}.lora_A.weight"] = up.to(dtype).contiguous(), down.to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
        elif kind == "bias":
            out[f"{LORA_PREFIX}{module}.diff_b"] = delta.to(dtype)
        else:
            out[f"{LORA_PREFIX}{key.removesuffix('.weight')}.diff"] = delta.to(dtype)
    return out

