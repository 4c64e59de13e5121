"""The Qwen2.5-VL folder: read with clear errors, written in the layout the authors' `vlm/` uses.

The authors' `DeepGen-1.0-diffusers/vlm/` is a `Qwen2_5_VLForConditionalGeneration` folder (the rank-64 LoRA
merged in). We keep only `Qwen2_5_VLModel` (DeepGen never uses the LM head); transformers maps between the two
layouts when loading. When writing, we use the hub's own key layout (`model.*`, `visual.*`), which every
transformers version since Qwen2.5-VL's release reads.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import Qwen2_5_VLModel

from ..errors import CheckpointError
from .files import load_pretrained_folder

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def load_vlm(folder: str | Path, dtype: torch.dtype, attn_implementation: str) -> Qwen2_5_VLModel:
    """`Qwen2_5_VLModel` from a local folder; a one-sentence `CheckpointError` naming the folder and the fix when
    the folder is not a usable Qwen2.5-VL folder (no config, no weights, a damaged shard)."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"VLM folder {folder} has no config.json: point at the Qwen2.5-VL-3B-Instruct folder (or the download's vlm/ folder).")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"VLM folder {folder}: config.json is not valid JSON ({exc}); download it again.") from None
    if model_type != "qwen2_5_vl":
        raise CheckpointError(f"VLM folder {folder} holds a {model_type!r} model, not Qwen2.5-VL (model_type 'qwen2_5_vl'): pick the Qwen2.5-VL-3B-Instruct folder.")
    if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        raise CheckpointError(
            f"VLM folder {folder} holds no weights (no *.safetensors): the download is incomplete; fetch the "
            "model-*.safetensors files (and model.safetensors.index.json) into it."
        )
    return load_pretrained_folder(
        lambda: Qwen2_5_VLModel.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True),
        f"VLM folder {folder}",
    )


def vlm_hub_state(vlm: Qwen2_5_VLModel) -> dict[str, torch.Tensor]:
    """`Qwen2_5_VLModel` tensors under the hub's `Qwen2_5_VLForConditionalGeneration` names (`model.layers.*`,
    `visual.*`, and `lm_head.weight` when the embeddings are not tied)."""
    state = {}
    for key, tensor in vlm.state_dict().items():
        if key.startswith("language_model."):
            state["model." + key[len("language_model."):]] = tensor
        elif key.startswith("visual."):
            state[key] = tensor
        else:
            raise CheckpointError(f"unexpected VLM tensor {key!r}; this transformers version's Qwen2.5-VL layout is not known.")
    if not vlm.config.tie_word_embeddings:
        # DeepGen never uses the LM head; a head equal to the embeddings keeps the folder loadable by chat tools.
        state["lm_head.weight"] = vlm.language_model.embed_tokens.weight
    return state


def vlm_config_dict(vlm: Qwen2_5_VLModel, dtype: torch.dtype | None = None) -> dict:
    """The VLM's config as the authors' `vlm/config.json` has it: the conditional-generation class, the saved dtype."""
    config = copy.deepcopy(vlm.config)
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    data = config.to_dict()
    if dtype is not None:
        data["dtype"] = str(dtype).removeprefix("torch.")
    return data
