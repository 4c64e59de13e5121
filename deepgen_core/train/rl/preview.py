"""`rollout_preview`: the ComfyUI rollout preview's core, built on the trainer's own rollout and scoring code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ...errors import DeepGenInputError
from ...pipeline import DeepGenPipeline, StepCallback
from ...rewards.base import Reward
from .rollout import RolloutSettings, rollout, score_rollout


@dataclass
class RolloutPreview:
    """G images per prompt with each image's per-reward scores (None = not scored), details, weighted total and
    group advantage, exactly as the trainer computes them."""

    images: list[Image.Image]
    prompts: list[str]
    scores: dict[str, list[float | None]]
    details: dict[str, list[str]]
    total: list[float]
    advantages: list[float]


def rollout_preview(
    pipe: DeepGenPipeline,
    prompt: str | Sequence[str],
    *,
    group_size: int = 8,
    seed: int = 0,
    sampler: str = "cps_sde",
    eta: float = 1.0,
    steps: int = 50,
    guidance_scale: float = 0.0,
    height: int = 512,
    width: int = 512,
    rewards: Mapping[str, Reward],
    weights: Mapping[str, float] | None = None,
    advantage_mode: str = "gdpo",
    advantage_clip: float = 5.0,
    callback_on_step_end: StepCallback | None = None,
) -> RolloutPreview:
    """Roll out `group_size` images per prompt and score them like one trainer step does.

    Args:
        prompt: one prompt or a list (each its own group).
        seed: seeds a CPU generator (initial noise, then every SDE step's noise): a trainer step whose rollout
            generator has this seed gives the same images, scores and advantages.
        rewards: name -> reward (see `deepgen_core.rewards.build_reward`).
        weights: name -> weight for every image (default 1.0 each).
        callback_on_step_end: per-step hook of the whole group's sampling (see `rollout`).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not rewards:
        raise DeepGenInputError("rollout_preview needs at least one reward (e.g. {'ocr': OCRReward()}).")
    if group_size < 2:
        raise DeepGenInputError(f"group_size must be >= 2 (advantages compare images of a group), got {group_size}.")
    weights = dict(weights) if weights is not None else dict.fromkeys(rewards, 1.0)
    unknown = sorted(set(weights) - set(rewards))
    if unknown:
        raise DeepGenInputError(f"weights name rewards {unknown} that are not selected; selected: {sorted(rewards)}.")
    settings = RolloutSettings(sampler=sampler, eta=eta, num_inference_steps=steps, guidance_scale=guidance_scale, height=height, width=width)
    generator = torch.Generator("cpu").manual_seed(seed)
    ro = rollout(pipe, prompts, group_size, settings, generator, callback_on_step_end=callback_on_step_end)
    scored = score_rollout(ro, rewards, [weights] * len(ro.images), advantage_mode, advantage_clip)
    return RolloutPreview(
        images=ro.images, prompts=ro.prompts,
        scores={n: o.scores for n, o in scored.outputs.items()}, details={n: o.details for n, o in scored.outputs.items()},
        total=scored.total.tolist(), advantages=scored.advantages.tolist(),
    )
