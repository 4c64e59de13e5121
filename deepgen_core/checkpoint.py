"""Reading DeepGen checkpoints: file formats, key layouts, LoRA merging, config inference.

One pure converter per source layout (reference notes §7): the reference `state_dict()` layout used by the
released `model.pt`, the SFT and pretrain files, and their `.safetensors` equivalents, with the Qwen keys in
either the transformers-4.51 or the 4.52+ layout and with or without the VLM LoRA. Converters pop what they
map, so anything left over is reported, never silently dropped. Models never call this module themselves.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .config import ConnectorConfig, DeepGenConfig, template_from_reference
from .errors import CheckpointError

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CHECKPOINT_FILENAMES = ("model.safetensors", "model.pt", "deepgen_checkpoint.safetensors", "model.pth")

# Reference names (only here) -> our module names.
_BRIDGE_RENAMES = {
    "projector_1.": "bridge.proj_in.",
    "projector_2.": "bridge.proj_pooled.",
    "projector_3.": "bridge.proj_context.",
    "connector.": "bridge.connector.",
}
_LORA_RE = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.default)?(\.weight)?$")


@dataclass
class DeepGenStateDict:
    """A checkpoint split by component, in our key names.

    `encoder`: `think_tokens` and `bridge.*`; `vlm`: full VLM weights (rare) in `Qwen2_5_VLModel` names;
    `vlm_lora`: LoRA pairs keyed by VLM module name; `transformer`: diffusers SD3 names; `vae`: diffusers names.
    """

    encoder: dict[str, torch.Tensor] = field(default_factory=dict)
    vlm: dict[str, torch.Tensor] = field(default_factory=dict)
    vlm_lora: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    transformer: dict[str, torch.Tensor] = field(default_factory=dict)
    vae: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{len(self.encoder)} bridge/think-token tensors, {len(self.transformer)} DiT tensors, "
            f"{len(self.vlm_lora)} VLM LoRA modules, {len(self.vlm)} VLM tensors, {len(self.vae)} VAE tensors"
        )


# --------------------------------------------------------------------------------------------- file reading


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights: run `git lfs pull` in its repository or download the real file"
    if head.lstrip().startswith((b"<!DOCTYPE", b"<html", b"<HTML")):
        return "an HTML page (a failed download?), not weights: download the file again"
    if head.lstrip().startswith((b"{", b"[")):
        return "a JSON/text file, not weights: point at the weights file next to it"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8"):
        return "an image, not weights"
    return ""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat tensor dict from `.safetensors` (preferred) or a legacy torch file (`weights_only=True`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path.")
    if path.is_dir():
        found = [path / n for n in CHECKPOINT_FILENAMES if (path / n).is_file()]
        if (path / "mp_rank_00_model_states.pt").exists():
            raise CheckpointError(
                f"{path} is a DeepSpeed checkpoint directory; consolidate it first "
                "(DeepSpeed's zero_to_fp32.py) and pass the resulting file."
            )
        if not found:
            raise CheckpointError(f"no checkpoint file ({', '.join(CHECKPOINT_FILENAMES)}) in folder {path}.")
        path = found[0]
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy did not finish.")
    problem = _sniff(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is {problem}.")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own SafetensorError for corrupt/truncated headers
            raise CheckpointError(f"checkpoint {path} is not a valid safetensors file ({exc}); it may be truncated: copy or download it again.") from None
    if suffix in PICKLE_SUFFIXES:
        from .formats.safe_pickle import extract_weights, load_torch_file

        return extract_weights(load_torch_file(path), path)
    if suffix == ".zip":
        raise CheckpointError(f"{path} is a zip archive: unzip it first (`unzip {path.name}`) and pass the .pt / .pth file inside.")
    raise CheckpointError(
        f"checkpoint {path} has an unsupported extension {suffix!r}; use .safetensors or a torch state dict "
        f"({', '.join(PICKLE_SUFFIXES)})."
    )


# --------------------------------------------------------------------------------------------- key conversion


def reference_bridge_key(key: str) -> str:
    """`meta_queries` / `projector_*` / `connector.*` (reference names) -> our encoder parameter name."""
    if key == "meta_queries":
        return "think_tokens"
    prefix = next((p for p in _BRIDGE_RENAMES if key.startswith(p)), None)
    if prefix is None:
        raise KeyError(key)
    return _BRIDGE_RENAMES[prefix] + key[len(prefix) :]


def _vlm_key(key: str) -> str:
    """A reference `lmm.` key (4.51 or 4.56 layout, possibly PEFT-wrapped) -> `Qwen2_5_VLModel` name."""
    key = key.replace(".base_layer.", ".")
    for old, new in (("model.language_model.", "language_model."), ("model.visual.", "visual."), ("model.", "language_model.")):
        if key.startswith(old):
            return new + key[len(old) :]
    return key  # "visual.*" (4.51) is already right; "lm_head.*" stays and is dropped by the caller


def convert_reference_state_dict(state_dict: dict[str, torch.Tensor]) -> DeepGenStateDict:
    """Split a reference-layout state dict (`meta_queries`, `projector_*`, `connector.*`, `transformer.*`,
    optional `lmm.*` LoRA) into components with our names. Raises on any key it does not understand."""
    sd = dict(state_dict)
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    out = DeepGenStateDict()
    for key in list(sd):
        if key == "meta_queries" or key.startswith(tuple(_BRIDGE_RENAMES)):
            out.encoder[reference_bridge_key(key)] = sd.pop(key)
        elif key.startswith("transformer."):
            out.transformer[key[len("transformer.") :]] = sd.pop(key)
        elif key.startswith("vae."):
            out.vae[key[len("vae.") :]] = sd.pop(key)
        elif key.startswith("lmm."):
            name = _vlm_key(key[len("lmm.") :])
            tensor = sd.pop(key)
            match = _LORA_RE.match(name)
            if name.startswith("lm_head"):
                logger.debug("ignoring %s: DeepGen never uses the LM head", key)
            elif match:
                out.vlm_lora.setdefault(match["module"], {})[match["kind"]] = tensor
            else:
                out.vlm[name] = tensor
    if sd:
        raise CheckpointError(f"checkpoint holds keys DeepGen does not know: {group_keys(sd)}.")
    for module, pair in out.vlm_lora.items():
        if len(pair) != 2:
            raise CheckpointError(f"LoRA for VLM module {module!r} is incomplete: only {sorted(pair)} present.")
    return out


def group_keys(keys: object, limit: int = 8) -> str:
    """`{'bridge.connector': 32, ...}`-style summary: keys counted by their first two dotted parts."""
    counts: dict[str, int] = defaultdict(int)
    for k in keys:
        counts[".".join(k.split(".")[:2])] += 1
    items = sorted(counts.items())
    text = ", ".join(f"{p} ({n})" for p, n in items[:limit])
    return text + (f", ... {len(items) - limit} more groups" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------- LoRA


def merge_vlm_lora(vlm: torch.nn.Module, lora: dict[str, dict[str, torch.Tensor]], alpha: float = 128.0) -> int:
    """Merge reference-style LoRA pairs into the VLM weights in place (reference notes §1.8).

    Linear: W += (alpha/r) B A. Embedding: E += (alpha/r) (B A)^T. `alpha` is not stored in the files; the
    reference trains with r = 64, alpha = 128 (scale 2.0). Returns the number of merged modules.
    """
    modules = dict(vlm.named_modules())
    for name, pair in lora.items():
        module = modules.get(name)
        if module is None:
            raise CheckpointError(f"the checkpoint has a LoRA for VLM module {name!r}, which this VLM does not have.")
        weight = module.weight
        if "lora_A" in pair:
            a, b = pair["lora_A"].float(), pair["lora_B"].float()
            delta = b @ a
        else:
            a, b = pair["lora_embedding_A"].float(), pair["lora_embedding_B"].float()
            delta = (b @ a).T
        if delta.shape != weight.shape:
            raise CheckpointError(f"LoRA for {name!r} gives shape {tuple(delta.shape)}, the weight is {tuple(weight.shape)}.")
        rank = a.shape[0]
        with torch.no_grad():
            weight.copy_((weight.float() + (alpha / rank) * delta.to(weight.device)).to(weight.dtype))
    if lora:
        logger.info("merged %d VLM LoRA modules (alpha %.0f)", len(lora), alpha)
    return len(lora)


# --------------------------------------------------------------------------------------------- config


def declared_config_from_json(data: dict) -> dict:
    """The fields a config file declares: our `DeepGenConfig.to_dict()` format (all fields), or the reference's
    `deepgen_config.json` (`num_queries` and the `connector` block only)."""
    if "num_queries" not in data:
        DeepGenConfig.from_dict(data)  # validates names and combinations
        return data
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    # The reference's SCB rule is hard-coded: every 6th hidden state (notes §1.3).
    declared = {"num_think_tokens": data["num_queries"], "scb_layer_stride": 6,
                "connector": {k: data["connector"][k] for k in keys if k in data.get("connector", {})}}
    if isinstance(data.get("prompt_template"), dict):
        declared["prompt_template"] = {**DeepGenConfig().to_dict()["prompt_template"], **template_from_reference(data["prompt_template"])[0]}
    return declared


def infer_config(encoder_sd: dict[str, torch.Tensor], vlm_num_hidden_layers: int, declared: DeepGenConfig | dict | None) -> DeepGenConfig:
    """Read every size the weights determine; take the rest (attention heads, layer rule) from `declared` or the
    defaults, and fail with a precise message where `declared` disagrees with the weights."""
    if isinstance(declared, DeepGenConfig):
        declared = declared.to_dict()
    declared = declared or {}
    try:
        think = encoder_sd["think_tokens"]
        proj_in = encoder_sd["bridge.proj_in.weight"]
        fc1 = encoder_sd["bridge.connector.layers.0.mlp.fc1.weight"]
        pooled = encoder_sd["bridge.proj_pooled.weight"]
        context = encoder_sd["bridge.proj_context.weight"]
    except KeyError as exc:
        raise CheckpointError(
            f"the checkpoint lacks {exc.args[0]!r} (reference names: think tokens `meta_queries`, `projector_*`, "
            "`connector.*`); it is not a DeepGen checkpoint, or only a DiT file."
        ) from None
    layers = {int(k.split(".")[3]) for k in encoder_sd if k.startswith("bridge.connector.layers.")}
    hidden = think.shape[1]
    defaults = DeepGenConfig()
    declared_connector = declared.get("connector", {})
    connector = ConnectorConfig(
        hidden_size=proj_in.shape[0],
        intermediate_size=fc1.shape[0],
        num_hidden_layers=len(layers),
        num_attention_heads=declared_connector.get("num_attention_heads", max(1, proj_in.shape[0] // 64)),
        layer_norm_eps=declared_connector.get("layer_norm_eps", defaults.connector.layer_norm_eps),
        hidden_act=declared_connector.get("hidden_act", defaults.connector.hidden_act),
    )
    inferred = DeepGenConfig(
        num_think_tokens=think.shape[0],
        vlm_hidden_size=hidden,
        vlm_num_hidden_layers=vlm_num_hidden_layers,
        scb_layer_stride=declared.get("scb_layer_stride", defaults.scb_layer_stride),
        scb_num_layers=proj_in.shape[1] // hidden,
        connector=connector,
        pooled_projection_dim=pooled.shape[0],
        joint_attention_dim=context.shape[0],
        max_text_length=declared.get("max_text_length", defaults.max_text_length),
        default_image_size=declared.get("default_image_size", defaults.default_image_size),
        edit_negative_prompt=declared.get("edit_negative_prompt", defaults.edit_negative_prompt),
        prompt_template=declared.get("prompt_template", defaults.prompt_template),
    )
    got = inferred.to_dict()
    diffs = [f"{k}: config {v} vs weights {got[k]}" for k, v in declared.items() if k != "connector" and v != got[k]]
    diffs += [f"connector.{k}: config {v} vs weights {got['connector'][k]}" for k, v in declared_connector.items() if v != got["connector"][k]]
    if diffs:
        raise CheckpointError(f"the checkpoint does not fit the declared DeepGen config: {'; '.join(diffs)}.")
    _check_undeclared(declared, (think.shape[0], hidden, proj_in.shape[0], fc1.shape[0], len(layers), proj_in.shape[1] // hidden), defaults)
    return inferred


def _check_undeclared(declared: dict, shapes: tuple[int, ...], defaults: DeepGenConfig) -> None:
    """The weights fix every size but not the connector's attention head count nor the SCB layer stride; both
    change the image. Without a declared config only DeepGen 1.0's own shapes imply them (its released values)."""
    missing = [name for name, found in (("connector.num_attention_heads", "num_attention_heads" in declared.get("connector", {})),
                                        ("scb_layer_stride", "scb_layer_stride" in declared)) if not found]
    released = (defaults.num_think_tokens, defaults.vlm_hidden_size, defaults.connector.hidden_size,
                defaults.connector.intermediate_size, defaults.connector.num_hidden_layers, defaults.scb_num_layers)
    if not missing or shapes == released:
        return
    raise CheckpointError(
        f"the weights do not store {' and '.join(missing)}, and they are not DeepGen 1.0's shapes, so the released "
        "values cannot be assumed: keep the deepgen_config.json that came with the checkpoint beside it, or pass it "
        "(`--config` / `config=`)."
    )


def load_config_file(path: str | Path) -> dict:
    """Read a DeepGen config JSON (ours or the reference's) into the dict of fields it declares."""
    path = Path(path)
    try:
        return declared_config_from_json(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"DeepGen config {path} could not be read ({exc}); fix or replace the file.") from exc


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a `.safetensors` file; a clear `CheckpointError` for a broken or truncated one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as exc:  # safetensors raises its own SafetensorError (no importable base class)
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}): it is truncated or damaged; copy or download it again.") from None
