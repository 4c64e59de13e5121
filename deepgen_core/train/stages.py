"""Stages 1 and 2 (reference notes §5.2): which parameters train.

Stage 1 (alignment pre-training) trains the think tokens and the SCB bridge (projectors + connector), and the
DiT and the VLM's text model only when they have no pretrained weights (`train_transformer`, `train_vlm_text`:
DeepGen-Tiny). Stage 2 (joint SFT) also trains the whole DiT and a LoRA on the VLM. Otherwise the VLM base
weights and the VAE stay frozen. A stage is a small function chosen once from the config, never a string test
inside the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .config import TrainConfig
from .modeling import DeepGenTrainModel, attach_lora

logger = logging.getLogger(__name__)

BRIDGE_PREFIXES = ("encoder.think_tokens", "encoder.bridge.")


def _freeze_all_but_bridge(model: DeepGenTrainModel) -> None:
    model.requires_grad_(False)
    model.encoder.think_tokens.requires_grad_(True)
    model.encoder.bridge.requires_grad_(True)


def setup_alignment(model: DeepGenTrainModel, config: TrainConfig | None) -> None:
    """Stage 1: bridge only (think tokens, projectors, connector); plus the DiT when `train_transformer` is set and
    the VLM's text model when `train_vlm_text` is set, for a model without a pretrained DiT or VLM (DeepGen-Tiny:
    a frozen random VLM barely encodes word order, and the connector has no positions, so "a red circle on a blue
    background" would be a bag of words)."""
    _freeze_all_but_bridge(model)
    if config is not None and config.train_transformer:
        model.transformer.requires_grad_(True)
    if config is not None and config.train_vlm_text:
        model.encoder.vlm.language_model.requires_grad_(True)


def setup_sft(model: DeepGenTrainModel, config: TrainConfig) -> None:
    """Stage 2: bridge + whole DiT (`train_transformer`) + VLM LoRA (`lora.enabled`)."""
    _freeze_all_but_bridge(model)
    if config.lora.enabled:
        attach_lora(model.encoder, config.lora)
        for name, param in model.encoder.vlm.named_parameters():
            param.requires_grad_("lora_" in name)
    if config.train_transformer:
        model.transformer.requires_grad_(True)


STAGES: dict[str, Callable[[DeepGenTrainModel, TrainConfig], None]] = {"pretrain": setup_alignment, "sft": setup_sft}


def setup_stage(model: DeepGenTrainModel, config: TrainConfig) -> dict[str, int]:
    """Apply the stage's freezing (and LoRA); returns trainable parameter counts per component (logged)."""
    STAGES[config.stage](model, config)
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = "lora" if "lora_" in name else ("bridge" if name.startswith(BRIDGE_PREFIXES) else name.split(".")[0])
            counts[group] = counts.get(group, 0) + param.numel()
    logger.info("stage %s trains %s", config.stage, ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())))
    return counts
