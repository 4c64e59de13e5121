"""DeepGenRolloutPreview: one MR-GRPO rollout group with its rewards and advantages, from the trainer's own code."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import torch

from ..deepgen_core.errors import DeepGenInputError
from ..deepgen_core.image_processing import (
    captioned_grid,
    pil_to_tensor,
    to_channels_last,
)
from ..deepgen_core.latents import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR
from ..deepgen_core.rewards import build_reward
from ..deepgen_core.sampling import SDE_SAMPLERS
from ..deepgen_core.train.rl.preview import rollout_preview
from ..deepgen_core.validation import check_sampler_node
from ._comfy import folder_paths, io, model_management, ui
from .choices import check_choices
from .loading import DeepGenModelType
from .model import activation_estimate, compile_errors
from .rewards import ocr_engine
from .sampling import step_progress
from .ui_data import rollout_payload, thumbnails

logger = logging.getLogger(__name__)
# Rewards this node can build by itself. clip_sim takes its model from a transformers CLIP folder under
# models/clip_vision; unifiedreward_think needs a VLM server and runs in training only.
PREVIEW_REWARDS = ["brightness", "clip_sim", "color", "ocr", "shape_world"]
CLIP_FOLDER = "clip_vision"


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
        if name == "unifiedreward_think":
            raise DeepGenInputError("rewards: unifiedreward_think needs a UnifiedReward VLM server, so it runs in training only; "
                                    f"preview with {PREVIEW_REWARDS}.")
        if name not in PREVIEW_REWARDS:
            raise DeepGenInputError(f"rewards: unknown reward {name!r}; choose from {PREVIEW_REWARDS} as 'name=weight, ...'.")
        try:
            weights[name] = float(value) if value.strip() else 1.0
        except ValueError as exc:
            raise DeepGenInputError(f"rewards: weight of {name!r} must be a number, got {value!r}.") from exc
    if not weights:
        raise DeepGenInputError("rewards is empty; give at least one, e.g. 'ocr=1'.")
    return weights


def clip_folder() -> str:
    """The first transformers CLIP folder (one holding a config.json) under ComfyUI's clip_vision folders."""
    bases = folder_paths.get_folder_paths(CLIP_FOLDER) if CLIP_FOLDER in folder_paths.folder_names_and_paths else []
    found = sorted(entry.path for base in bases if os.path.isdir(base) for entry in os.scandir(base)
                   if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "config.json")))
    if not found:
        raise DeepGenInputError(
            f"rewards: clip_sim needs a transformers CLIP folder (config.json, weights, tokenizer; e.g. openai/clip-vit-large-patch14) "
            f"as a sub-folder of models/{CLIP_FOLDER} (searched: {bases}); none is there. Add one, or drop clip_sim from rewards.")
    if len(found) > 1:
        logger.info("DeepGen rollout preview: clip_sim uses %s (first of %d CLIP folders)", found[0], len(found))
    return found[0]


def preview_reward(name: str):
    """Build a reward for the preview; the OCR engine is the one DeepGen OCR Reward keeps alive. CLIP runs on the
    CPU, outside ComfyUI's memory manager."""
    if name == "ocr":
        return ocr_engine()
    if name == "clip_sim":
        return build_reward(name, path=clip_folder())
    return build_reward(name)


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
                io.String.Input("rewards", default="ocr=1", tooltip=f"Rewards and weights, 'name=weight, ...' from {PREVIEW_REWARDS}. clip_sim reads a transformers CLIP folder under models/clip_vision "
                               "(runs on the CPU); unifiedreward_think needs a VLM server and runs in training only."),
            ],
            outputs=[
                io.Image.Output("IMAGES", display_name="images", tooltip="The rollout images (prompts x G)."),
                io.String.Output("REPORT", display_name="report", tooltip="Per image: reward scores, weighted total and group advantage."),
            ],
        )

    @classmethod
    def validate_inputs(cls, rewards: str, sampler: str = "cps_sde") -> bool | str:
        """Refuse an unknown sampler, or unknown or unrunnable rewards, when the prompt is queued (named inputs only:
        ComfyUI keeps its own range checks for the others)."""
        if (answer := check_choices(sampler=(sampler, list(SDE_SAMPLERS)))) is not True:
            return answer
        if not isinstance(rewards, str):  # linked from another node: checked when it runs
            return True
        try:
            if "clip_sim" in parse_weights(rewards):
                clip_folder()
        except DeepGenInputError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, vae, prompts: str, group_size: int, seed: int, sampler: str, eta: float, steps: int, cfg: float,
                width: int, height: int, rewards: str) -> io.NodeOutput:
        check_sampler_node(seed, steps, cfg, None, sampler, eta)  # before any model is loaded
        weights = parse_weights(rewards)
        lines = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not lines:
            raise DeepGenInputError("prompts is empty; give one prompt per line.")
        reward_fns = {name: preview_reward(name) for name in weights}
        dit = model.transformer.model.inner
        tokens = 2 * len(lines) * group_size * (width * height // 256)
        pipe = model.pipeline(model.transformer, model.encoder, memory_required=activation_estimate(tokens, dit.inner_dim, dit.dtype))
        pipe.vae = NativeVAEDecoder(vae)
        progress = step_progress(steps, total=steps + 1)  # the whole group samples as one batch; the last tick is scoring
        with compile_errors(model):
            preview = rollout_preview(
                pipe, lines, group_size=group_size, seed=seed, sampler=sampler, eta=eta, steps=steps, guidance_scale=cfg,
                height=height, width=width, rewards=reward_fns, weights=weights, callback_on_step_end=progress,
            )
        progress.pbar.update_absolute(steps + 1, steps + 1)
        model_management.throw_exception_if_processing_interrupted()
        return cls._outputs(preview, weights, group_size, steps)

    @classmethod
    def _outputs(cls, preview, weights: dict[str, float], group_size: int, steps: int) -> io.NodeOutput:
        captions, report = [], []
        for i, prompt in enumerate(preview.prompts):
            scores = ", ".join(f"{n} {'n/a' if preview.scores[n][i] is None else f'{preview.scores[n][i]:.3f}'}" for n in weights)
            captions.append(f"#{i} adv {preview.advantages[i]:+.2f}\n{scores}")
            report.append(f"image {i} ({prompt!r}): {scores}; total {preview.total[i]:.3f}; advantage {preview.advantages[i]:+.3f}")
        images = torch.cat([to_channels_last(pil_to_tensor(img)) for img in preview.images])
        grid = to_channels_last(pil_to_tensor(captioned_grid(preview.images, captions, columns=group_size)))
        payload = rollout_payload(preview, weights, group_size, thumbnails(images, cls), steps)
        # `images` (the captioned grid) stays for API clients; the web extension draws `deepgen_rollout`
        return io.NodeOutput(images, "\n".join(report), ui=ui.PreviewImage(grid, cls=cls).as_dict() | {"deepgen_rollout": [payload]})
