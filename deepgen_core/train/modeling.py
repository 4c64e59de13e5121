"""The trainable DeepGen module (the inference classes plus the loss), model builders and the VLM LoRA.

`DeepGenTrainModel.forward(batch, noise)` computes the stage-1/2 rectified-flow loss (reference notes §5.1)
through the same encoder, DiT and VAE the pipeline uses. All randomness (timesteps, noise, VAE posterior noise)
comes in `StepNoise`, drawn by the caller from an explicit generator, so a step is a pure function of its
inputs: the fixture's recorded noise reproduces the reference loss, and a resumed run repeats its losses.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from torch import nn
from transformers import Qwen2_5_VLModel

from ..config import DeepGenConfig
from ..errors import DeepGenInputError
from ..latents import vae_scale_factor
from ..loading import (
    DeepGenComponents,
    default_attn_implementation,
    is_converted,
    load_converted,
    load_release,
    load_tokenizer,
)
from ..models.transformer import DeepGenSD3Transformer
from ..models.vlm import DeepGenEncoder
from ..pipeline import DeepGenPipeline
from .config import LoraSettings, ModelConfig, text_layer_lora_targets
from .objectives import (
    FlowMatchingTargets,
    per_sample_flow_loss,
    predict_velocity,
    training_schedule,
)

logger = logging.getLogger(__name__)


@dataclass
class StepNoise:
    """Randomness of one micro-batch. `u` (B,) uniform timestep draws; `noise` per-target eps in latent shape;
    `target_eps` / `source_eps` the VAE posterior noise of targets and of each sample's references."""

    u: torch.Tensor
    noise: list[torch.Tensor]
    target_eps: list[torch.Tensor]
    source_eps: list[list[torch.Tensor]] | None = None


class DeepGenTrainModel(nn.Module):
    """Encoder (VLM + think tokens + SCB), DiT and frozen VAE in one module, so that DDP / DeepSpeed wrap them
    together; the tokenizer and the scheduler are plain attributes.

    Args:
        components: the same components the pipeline uses.
        max_text_length: training-time left truncation of prompts (reference: 1024, notes §2.2).
    """

    def __init__(self, components: DeepGenComponents, max_text_length: int = 1024) -> None:
        super().__init__()
        self.encoder, self.transformer, self.vae = components.encoder, components.transformer, components.vae
        self.tokenizer, self.scheduler = components.tokenizer, components.scheduler
        self.max_text_length = max_text_length
        self.vae.requires_grad_(False)

    def pipeline(self) -> DeepGenPipeline:
        """An inference pipeline over these very modules (the loss's prompt encoding, sampling during training,
        export checks); one per model, so that its token memo lasts across steps."""
        pipe = self.__dict__.get("_pipeline")
        if pipe is None:
            pipe = self.__dict__["_pipeline"] = DeepGenPipeline(self.tokenizer, self.encoder, self.transformer, self.vae, self.scheduler)
        return pipe

    def latent_shape(self, pixels: torch.Tensor) -> tuple[int, int, int]:
        """(C, H/f, W/f) of the VAE latent of a (3, H, W) image."""
        f = vae_scale_factor(self.vae)
        return (self.vae.config.latent_channels, pixels.shape[-2] // f, pixels.shape[-1] // f)

    @torch.no_grad()
    def posterior(self, pixels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The VAE posterior (mean, std) of each image, unscaled; images of equal size are encoded together."""
        device, dtype = self.transformer.device, self.vae.dtype
        mean: list[torch.Tensor] = [None] * len(pixels)  # type: ignore[list-item]
        std: list[torch.Tensor] = [None] * len(pixels)  # type: ignore[list-item]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault(tuple(p.shape), []).append(i)
        for members in groups.values():
            dist = self.vae.encode(torch.stack([pixels[i] for i in members]).to(device, dtype)).latent_dist
            for k, i in enumerate(members):
                mean[i], std[i] = dist.mean[k], dist.std[k]
        return mean, std

    def sample_latents(self, mean: list[torch.Tensor], std: list[torch.Tensor], eps: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """(mean + std * eps - shift) * scale per image (the reference's sampled posterior, §3.4): one (B, C, h, w)
        tensor when all share a shape (one op for the batch), else a list."""
        cfg = self.vae.config
        if all(m.shape == mean[0].shape for m in mean):
            m, s = torch.stack(mean), torch.stack(std)
            return (m + s * torch.stack(eps).to(m.device, m.dtype) - cfg.shift_factor) * cfg.scaling_factor
        return [(m + s * e.to(m.device, m.dtype) - cfg.shift_factor) * cfg.scaling_factor for m, s, e in zip(mean, std, eps)]

    def encode_latents(self, pixels: list[torch.Tensor], eps: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Sampled, shifted and scaled latents of images (see `posterior` and `sample_latents`)."""
        return self.sample_latents(*self.posterior(pixels), eps)

    def forward(self, batch: dict[str, Any], noise: StepNoise) -> dict[str, torch.Tensor]:
        """Rectified-flow loss of one single-task micro-batch.

        Args:
            batch: `texts` (prompt dropout already applied) and either the images, `pixel_values` list of (3, H_i,
                W_i) targets in [-1, 1] and optional `pixel_values_src` per-sample lists of (3, h, w) references
                (editing), or their cached encodings (`train.latent_cache`): `latent_mean` / `latent_std` lists,
                optional `ref_latent_mean` / `ref_latent_std` per-sample lists and `ref_tokens` (`ReferenceTokens`).
            noise: the step's randomness (see `StepNoise`).

        Returns:
            `loss` (fp32 scalar, mean over samples of the per-sample MSE) and `per_sample` (B,).
        """
        cached = "latent_mean" in batch
        if cached:
            latents = self.sample_latents(batch["latent_mean"], batch["latent_std"], noise.target_eps)
        else:
            latents = self.encode_latents(batch["pixel_values"], noise.target_eps)
        references = None
        if noise.source_eps is not None:
            if cached:
                mean = [m for refs in batch["ref_latent_mean"] for m in refs]
                flat = self.sample_latents(mean, [s for refs in batch["ref_latent_std"] for s in refs], [e for eps in noise.source_eps for e in eps])
            else:
                flat = self.encode_latents([s for refs in batch["pixel_values_src"] for s in refs], [e for eps in noise.source_eps for e in eps])
            references, k = [], 0
            for eps in noise.source_eps:
                references.append(flat[k : k + len(eps)])
                k += len(eps)
        vision = batch.get("ref_tokens") if cached else batch.get("pixel_values_src")
        embeddings = self.pipeline().encode_prompt(batch["texts"], [], vision, max_text_length=self.max_text_length)
        # The table lookup runs on the CPU (the scheduler's tables live there), then moves to the model's device.
        timesteps, sigmas = training_schedule(self.scheduler, noise.u.cpu(), self.transformer.dtype)
        timesteps, sigmas = timesteps.to(self.transformer.device), sigmas.to(self.transformer.device)
        if torch.is_tensor(latents):
            eps = torch.stack(noise.noise).to(latents.device, latents.dtype)
        else:
            eps = [n.to(z.device, z.dtype) for n, z in zip(noise.noise, latents)]
        targets = FlowMatchingTargets(latents, eps, timesteps, sigmas)
        # `graphs`: the step's CUDA graphs (`train.graphs.enable_training_graphs`) when installed.
        graphs = self.__dict__.get("graphs")
        dit = self.transformer if graphs is None else graphs.transformer_call
        predictions = predict_velocity(dit, targets, embeddings.prompt_embeds, embeddings.pooled_prompt_embeds, references)
        per_sample = per_sample_flow_loss(predictions, latents, eps)
        return {"loss": per_sample.mean(), "per_sample": per_sample.detach()}


def draw_step_noise(model: DeepGenTrainModel, batch: dict[str, Any], generator: torch.Generator) -> StepNoise:
    """All randomness of a micro-batch, drawn on the CPU in fp32 from `generator` in a fixed order (the same for
    images and their cached encodings)."""
    def randn(shape):
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def draws(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        # Equal shapes: one call for the batch. torch's CPU sampler fills 16 values at a time, so when a sample
        # holds a multiple of 16 values (any 16-channel latent) this is bitwise the per-sample stream (tested).
        if shapes and all(s == shapes[0] for s in shapes) and math.prod(shapes[0]) % 16 == 0:
            return list(randn((len(shapes), *shapes[0])).unbind(0))
        return [randn(shape) for shape in shapes]

    if "latent_mean" in batch:
        shapes = [tuple(m.shape) for m in batch["latent_mean"]]
        ref_shapes = [[tuple(m.shape) for m in refs] for refs in batch["ref_latent_mean"]] if "ref_latent_mean" in batch else None
    else:
        shapes = [model.latent_shape(p) for p in batch["pixel_values"]]
        sources = batch.get("pixel_values_src")
        ref_shapes = [[model.latent_shape(s) for s in refs] for refs in sources] if sources is not None else None
    u = torch.rand(len(shapes), generator=generator)
    noise = draws(shapes)
    target_eps = draws(shapes)
    source_eps = [[randn(shape) for shape in refs] for refs in ref_shapes] if ref_shapes is not None else None
    return StepNoise(u, noise, target_eps, source_eps)


# ------------------------------------------------------------------------------------------------ builders


def build_components(config: ModelConfig) -> DeepGenComponents:
    """Components in fp32 (master weights; accelerate / DeepSpeed apply the mixed precision)."""
    dtype = torch.float32
    if config.source == "tiny":
        from ..presets import tiny_components

        return tiny_components(seed=config.tiny_seed, dtype=dtype)
    if config.source == "base":
        return fresh_bridge_components(config)
    if is_converted(config.source):
        return load_converted(config.source, dtype, config.attn_implementation)
    return load_release(config.source, config.vlm, config.diffusion, config.deepgen_config, dtype, config.attn_implementation)


def fresh_bridge_components(config: ModelConfig) -> DeepGenComponents:
    """Stage-1 start: base Qwen2.5-VL and UniPic2 DiT/VAE with a new bridge (projector_2/3 zero-initialised, §1.3)."""
    from pathlib import Path

    if not config.vlm or not config.diffusion:
        raise DeepGenInputError("model.source 'base' needs model.vlm (Qwen2.5-VL folder) and model.diffusion (UniPic2 folder).")
    attn = config.attn_implementation or default_attn_implementation()
    vlm = Qwen2_5_VLModel.from_pretrained(config.vlm, dtype=torch.float32, attn_implementation=attn, local_files_only=True)
    text = vlm.config.text_config
    encoder = DeepGenEncoder(vlm, DeepGenConfig(vlm_hidden_size=text.hidden_size, vlm_num_hidden_layers=text.num_hidden_layers), attn)
    for head in (encoder.bridge.proj_pooled, encoder.bridge.proj_context):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    diffusion = Path(config.diffusion)
    transformer = DeepGenSD3Transformer.from_pretrained(diffusion / "transformer", torch_dtype=torch.float32, local_files_only=True)
    vae = AutoencoderKL.from_pretrained(diffusion / "vae", torch_dtype=torch.float32, local_files_only=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(diffusion / "scheduler", local_files_only=True)
    return DeepGenComponents(load_tokenizer(config.vlm), encoder, transformer, vae, scheduler)


def attach_lora(encoder: DeepGenEncoder, settings: LoraSettings) -> int:
    """Add a peft LoRA (adapter 'default') to the VLM modules matching `settings.target_modules`; returns the
    number of LoRA parameters. Gaussian init as the reference: Linear B = 0, Embedding A = 0 (an identity).

    'auto' targets embed_tokens and the text layers up to the deepest one the SCB stacks: hidden state k is the
    output of layer k-1, so layers >= max(scb_layer_indices) never influence the loss (the reference's 'auto'
    also wrapped them and the vision tower; those adapters stay at their identity init)."""
    from peft import LoraConfig

    targets = settings.target_modules
    if targets == "auto":
        targets = text_layer_lora_targets(range(max(encoder.config.scb_layer_indices)))
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, init_lora_weights="gaussian")
    vlm = encoder.vlm
    try:
        vlm.add_adapter(config)
    except ValueError as exc:
        raise DeepGenInputError(f"lora.target_modules {settings.target_modules!r} matches no VLM module ({exc}).") from exc
    params = [p for n, p in vlm.named_parameters() if "lora_" in n]
    logger.info("VLM LoRA: %d tensors, %d parameters (r=%d, alpha=%g)", len(params), sum(p.numel() for p in params), settings.rank, settings.alpha)
    return sum(p.numel() for p in params)


def detach_lora(vlm: nn.Module) -> None:
    """Remove the peft LoRA layers of `vlm` in place: every wrapped module is its base layer again and the
    adapters are dropped, not merged (`export.plain_vlm` merges them into a copy)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(vlm.named_modules()):
        if isinstance(module, LoraLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(vlm.get_submodule(parent_name) if parent_name else vlm, child, module.get_base_layer())
    if hasattr(vlm, "peft_config"):
        del vlm.peft_config
        vlm._hf_peft_config_loaded = False


def enable_gradient_checkpointing(model: DeepGenTrainModel) -> None:
    model.transformer.enable_gradient_checkpointing()
    # Non-reentrant: the VLM's inputs (think tokens) need gradients through frozen layers.
    model.encoder.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_for_training(model: DeepGenTrainModel, mode: str = "regional", capturable: bool = False, **compile_kwargs) -> dict[str, int]:
    """`torch.compile` the modules that run with gradients, in place, per region (`model.compile`).

    The DiT's transformer blocks (diffusers' `compile_repeated_blocks`), the parts of every VLM decoder layer
    (attention with the peft LoRA, MLP, norms) and the connector layers; everything else (embeddings, masks,
    M-RoPE positions, the frozen vision tower and VAE, the loss) stays eager. Call it after the LoRA is attached,
    checkpoints are imported and gradient checkpointing is enabled, and before DDP / DeepSpeed wrap the model:
    the compiled regions then sit inside the checkpointed ones, parameter names and state dicts are unchanged,
    and deep copies (the export's merged VLM) are uncompiled. The first step compiles (shapes are dynamic: one
    compile serves every prompt length and batch size); later steps equal the eager ones within float rounding.

    Args:
        model: the train model, stage already applied.
        mode: "regional" (the only mode).
        capturable: for `model.cuda_graphs`: leave the VLM attention and the connector layers eager (their graph
            breaks cannot run inside a CUDA graph capture); the DiT blocks and the VLM MLPs and norms compile.
        compile_kwargs: passed to `torch.compile`, e.g. `backend="aot_eager"` (tests) or `mode=`.

    Returns:
        Compiled module counts: `transformer_blocks`, `vlm_layer_parts`, `connector_layers`.
    """
    from ..acceleration import compile_encoder_for_training, compile_transformer

    if mode != "regional":
        raise DeepGenInputError(f"training compile mode must be 'regional', got {mode!r}.")
    compile_transformer(model.transformer, "regional", **compile_kwargs)
    counts = {"transformer_blocks": len(model.transformer.transformer_blocks),
              **compile_encoder_for_training(model.encoder, capturable=capturable, **compile_kwargs)}
    logger.info("torch.compile (%s, %s): %s", mode, compile_kwargs.get("backend", "inductor"), counts)
    return counts
