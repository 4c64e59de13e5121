"""From training to inference and back: export a trained model, import reference checkpoints to continue.

- `export_inference`: the converted, self-describing safetensors layout (`loading.save_converted`) that
  `DeepGenPipeline.from_pretrained` and the ComfyUI loader open directly; the VLM LoRA is merged.
- `export_reference_checkpoint`: one `.safetensors` in the reference key layout (`meta_queries`,
  `projector_*`, `connector.*`, `transformer.*`, and the VLM LoRA as separate `lmm.…lora_A/B` keys), loaded with
  the base VLM and DiT folders like the released checkpoints.
- `import_checkpoint`: load such a file (ours or the reference's, `.pt` or `.safetensors`, LoRA included) into
  a training model, e.g. stage-1 weights to start SFT.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import (
    _BRIDGE_RENAMES,
    convert_reference_state_dict,
    merge_vlm_lora,
    read_state_dict,
)
from ..errors import CheckpointError
from ..loading import (
    DeepGenComponents,
    atomic_save_safetensors,
    load_state_checked,
    save_converted,
)
from .modeling import DeepGenTrainModel, detach_lora

logger = logging.getLogger(__name__)

_LORA_SUFFIXES = {"lora_A": "lora_A.default.weight", "lora_B": "lora_B.default.weight",
                  "lora_embedding_A": "lora_embedding_A.default", "lora_embedding_B": "lora_embedding_B.default"}


def lora_pairs(vlm: nn.Module) -> tuple[dict[str, dict[str, torch.Tensor]], float]:
    """peft LoRA tensors of the VLM as {module name: {lora_A, lora_B} or {lora_embedding_A, ...}} and the scale
    alpha (r is read from the tensors by `merge_vlm_lora`)."""
    from peft.tuners.lora import LoraLayer

    pairs, alpha = {}, None
    for name, module in vlm.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.r:
            if "default" in module.lora_A:
                pair = {"lora_A": module.lora_A["default"].weight, "lora_B": module.lora_B["default"].weight}
            else:
                pair = {"lora_embedding_A": module.lora_embedding_A["default"], "lora_embedding_B": module.lora_embedding_B["default"]}
            pairs[name] = {k: v.detach().float().cpu() for k, v in pair.items()}
            alpha = module.lora_alpha["default"]
    return pairs, float(alpha or 0.0)


def plain_vlm(vlm: nn.Module) -> nn.Module:
    """A copy of the VLM without peft layers and with the LoRA merged: W + (alpha/r) B A (notes §1.8)."""
    pairs, alpha = lora_pairs(vlm)
    clean = copy.deepcopy(vlm)
    detach_lora(clean)
    merge_vlm_lora(clean, pairs, alpha=alpha)
    return clean


def inference_components(model: DeepGenTrainModel) -> DeepGenComponents:
    """Components for the pipeline with the LoRA merged (shares the DiT and VAE; copies the encoder if needed)."""
    encoder = model.encoder
    if lora_pairs(encoder.vlm)[0]:
        encoder = copy.copy(encoder)  # shallow: only the `vlm` child is replaced
        encoder._modules = dict(encoder._modules)
        encoder._modules["vlm"] = plain_vlm(model.encoder.vlm)
    return DeepGenComponents(model.tokenizer, encoder, model.transformer, model.vae, model.scheduler)


def export_inference(model: DeepGenTrainModel, out_dir: str | Path, dtype: torch.dtype | None = torch.bfloat16) -> dict[str, Path]:
    """Write the converted layout (encoder with merged LoRA, DiT, VAE, configs, tokenizer) into `out_dir`."""
    was_training = model.training
    paths = save_converted(inference_components(model.eval()), out_dir, dtype)
    model.train(was_training)
    logger.info("exported inference checkpoint to %s", out_dir)
    return paths


def export_reference_checkpoint(model: DeepGenTrainModel, path: str | Path, dtype: torch.dtype | None = torch.bfloat16) -> Path:
    """One safetensors in the reference layout, with the VLM LoRA kept separate (transformers-4.56 key names)."""
    inverse = {v: k for k, v in _BRIDGE_RENAMES.items()}
    state: dict[str, torch.Tensor] = {"meta_queries": model.encoder.think_tokens}
    for name, tensor in model.encoder.bridge.state_dict().items():
        full = "bridge." + name
        prefix = next(p for p in inverse if full.startswith(p))
        state[inverse[prefix] + full[len(prefix):]] = tensor
    state.update({f"transformer.{k}": v for k, v in model.transformer.state_dict().items()})
    pairs, _ = lora_pairs(model.encoder.vlm)
    for module, pair in pairs.items():
        ref_module = "lmm.model." + module  # language_model.* -> lmm.model.language_model.* (4.56 layout)
        state.update({f"{ref_module}.{_LORA_SUFFIXES[k]}": v for k, v in pair.items()})
    state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous() for k, v in state.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # The head count and SCB stride are not in the weights: the loaders read them from this file beside the checkpoint.
    (Path(path).parent / "deepgen_config.json").write_text(model.encoder.config.to_json())
    return atomic_save_safetensors(state, Path(path), {"format": "pt", "deepgen_reference_layout": "1"})


def import_checkpoint(model: DeepGenTrainModel, path: str | Path, lora_alpha: float = 128.0) -> None:
    """Load a reference-layout checkpoint (pre-train, SFT, RL, or `export_reference_checkpoint`) into `model`.

    Bridge tensors and any DiT tensors overlay the current weights (a pre-train file holds only the DiT
    pos-embed buffer). VLM LoRA pairs go into the peft LoRA where one is attached (to keep training it); pairs of
    other modules are merged into the VLM weights with `lora_alpha`.
    """
    parts = convert_reference_state_dict(read_state_dict(path))
    logger.info("importing %s: %s", path, parts.summary())
    load_state_checked(model.encoder, parts.encoder, f"bridge weights of {path}", partial=True)
    if parts.transformer:
        load_state_checked(model.transformer, parts.transformer, f"DiT weights of {path}", partial=True)
    if parts.vlm:
        load_state_checked(model.encoder.vlm, parts.vlm, f"VLM weights of {path}", partial=True)
    if not parts.vlm_lora:
        return
    ours, _ = lora_pairs(model.encoder.vlm)
    # Pairs for modules the attached LoRA trains go into it; the rest (the reference's vision-tower, lm_head or
    # last-layer adapters, which never receive gradients and so stay at B = 0) are merged into the base weights.
    others = {name: pair for name, pair in parts.vlm_lora.items() if name not in ours}
    if others:
        logger.info("merging %d LoRA modules of %s that the attached LoRA does not train", len(others), path)
        merge_vlm_lora(model.encoder.vlm, others, alpha=lora_alpha)
    modules = dict(model.encoder.vlm.named_modules())
    with torch.no_grad():
        for name, pair in parts.vlm_lora.items():
            if name in others:
                continue
            for kind, tensor in pair.items():
                holder = getattr(modules[name], kind)["default"]
                target = holder.weight if isinstance(holder, nn.Module) else holder
                if target.shape != tensor.shape:
                    raise CheckpointError(f"LoRA {name}.{kind}: file {tuple(tensor.shape)} vs model {tuple(target.shape)} (different lora.rank?).")
                target.copy_(tensor)
