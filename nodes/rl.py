"""DeepGenRolloutPreview: one MR-GRPO rollout group with its rewards and advantages, from the trainer's own code."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..deepgen_core.errors import DeepGenInputError
from ..deepgen_core.image_processing import (
    captioned_grid,
    pil_to_tensor,
    to_channels_last,
)
from ..deepgen_core.latents import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR
from ..deepgen_core.rewards import REWARDS, build_reward
from ..deepgen_core.sampling import SDE_SAMPLERS
from ..deepgen_core.train.rl.preview import rollout_preview
from ..deepgen_core.validation import check_sampler_node
from ._comfy import io, ui
from .loading import DeepGenModelType
from .model import activation_estimate, compile_errors


class NativeVAEDecoder:
    """Gives ComfyUI's VAE the decode interface `DeepGenPipeline.decode_latents` uses (diffusers' AutoencoderKL):
    raw latents in, `.sample` pixels in [-1, 1] (B, 3, H, W) out."""

    dtype = torch.float32

    def __init__(self, vae) -> None:
        self.vae = vae
        self.config = SimpleNamespace(scaling_factor=SD3_SCALING_FACTOR, shift_factor=SD3_SHIFT_FACTOR, block_out_channels=(128, 256, 512, 512))

    def decode(self, latents: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=self.vae.decode(latents.float()).movedim(-1, 1) * 2 - 1)


def parse_weights(text: str) -> dict[str, float]:
    """'ocr=1, brightness=0.5' -> {'ocr': 1.0, 'brightness': 0.5}."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.replace("\n", ",").split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in REWARDS:
            raise DeepGenInputError(f"rewards: unknown reward {name!r}; choose from {sorted(REWARDS)} as 'name=weight, ...'.")
        try:
            weights[name] = float(value) if value.strip() else 1.0
        except ValueError as exc:
            raise DeepGenInputError(f"rewards: weight of {name!r} must be a number, got {value!r}.") from exc
    if not weights:
        raise DeepGenInputError("rewards is empty; give at least one, e.g. 'ocr=1'.")
    return weights


class DeepGenRolloutPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DeepGenRolloutPreview",
            display_name="DeepGen RL Rollout Preview",
            category="DeepGen/rl",
            description="Samples one MR-GRPO group (G images per prompt, same initial noise, SDE sampler) and scores it with the selected rewards: per-reward scores, weighted total and group advantage per image, computed by the very functions training uses.",
            is_output_node=True,
            inputs=[
                DeepGenModelType.Input("model", tooltip="From DeepGen Loader."),
                io.Vae.Input("vae", tooltip="The SD3 VAE, to decode the rollouts."),
                io.String.Input("prompts", multiline=True, default='a shop sign that says "OPEN"', tooltip="One prompt per line; each is a group. Text in double quotes is the OCR target."),
                io.Int.Input("group_size", default=4, min=2, max=64, tooltip="G images per prompt (the reference trains with 8). Cost grows linearly."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seeds the initial noise and every SDE step (CPU generator), like a trainer step with this rollout seed."),
                io.Combo.Input("sampler", options=list(SDE_SAMPLERS), default="cps_sde", tooltip="The rollout SDE (reference: cps_sde)."),
                io.Float.Input("eta", default=1.0, min=0.0, max=2.0, step=0.05, tooltip="SDE noise level (reference: 1.0)."),
                io.Int.Input("steps", default=50, min=1, max=200, tooltip="Denoising steps, all stochastic (reference: 50)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, tooltip="CFG scale in the rollout; <= 1 disables it (the reference rolls out without CFG)."),
                io.Int.Input("width", default=512, min=16, max=4096, step=16, tooltip="Image width (multiple of 16)."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16, tooltip="Image height (multiple of 16)."),
                io.String.Input("rewards", default="ocr=1", tooltip=f"Rewards and weights, 'name=weight, ...' from {sorted(REWARDS)}. clip_sim needs a local CLIP folder and unifiedreward_think a server, so they run in training, not here."),
            ],
            outputs=[
                io.Image.Output("IMAGES", display_name="images", tooltip="The rollout images (prompts x G)."),
                io.String.Output("REPORT", display_name="report", tooltip="Per image: reward scores, weighted total and group advantage."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, prompts: str, group_size: int, seed: int, sampler: str, eta: float, steps: int, cfg: float,
                width: int, height: int, rewards: str) -> io.NodeOutput:
        check_sampler_node(seed, steps, cfg, None, sampler, eta)  # before any model is loaded
        weights = parse_weights(rewards)
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not lines:
            raise DeepGenInputError("prompts is empty; give one prompt per line.")
        reward_fns = {name: build_reward(name) for name in weights}
        dit = model.transformer.model.inner
        tokens = 2 * len(lines) * group_size * (width * height // 256)
        pipe = model.pipeline(model.transformer, model.encoder, memory_required=activation_estimate(tokens, dit.inner_dim, dit.dtype))
        pipe.vae = NativeVAEDecoder(vae)
        with compile_errors(model):
            preview = rollout_preview(
                pipe, lines, group_size=group_size, seed=seed, sampler=sampler, eta=eta, steps=steps, guidance_scale=cfg,
                height=height, width=width, rewards=reward_fns, weights=weights,
            )
        captions, report = [], []
        for i, prompt in enumerate(preview.prompts):
            scores = ", ".join(f"{n} {'n/a' if preview.scores[n][i] is None else f'{preview.scores[n][i]:.3f}'}" for n in weights)
            captions.append(f"#{i} adv {preview.advantages[i]:+.2f}\n{scores}")
            report.append(f"image {i} ({prompt!r}): {scores}; total {preview.total[i]:.3f}; advantage {preview.advantages[i]:+.3f}")
        images = torch.cat([to_channels_last(pil_to_tensor(img)) for img in preview.images])
        grid = to_channels_last(pil_to_tensor(captioned_grid(preview.images, captions, columns=group_size)))
        return io.NodeOutput(images, "\n".join(report), ui=ui.PreviewImage(grid, cls=cls))
