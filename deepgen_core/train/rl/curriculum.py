"""Hard-prompt curriculum for MR-GRPO: before the first step the starting model renders every distinct prompt with
the deterministic sampler, and the prompts it gets wrong are drawn `hard_weight` times as often.

Why: GRPO normalises rewards within a group, so a group whose G images all score the same teaches nothing. On a
model that already gets most prompts right, most of a batch is such groups (DeepGen-Tiny's stage 2 reads ~90% of
its training words right, and at eta 0.5 ~85% of its word groups were all right). This is an offline form of DAPO's
dynamic sampling (Yu et al. 2025, which re-samples until no group is uniform): difficulty is measured once, with the
sampler users sample with, at one image per prompt instead of an oversampled batch every step.

The scores are kept in `<output_dir>/curriculum.json`, so a resumed run draws exactly the prompts of the
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ...rewards.base import Reward
from .prompts import PromptSampler
from .rollout import RolloutSettings, score_images

logger = logging.getLogger(__name__)

FILE_NAME = "curriculum.json"


@dataclass(frozen=True)
class PromptScore:
    """The starting model's mean weighted reward on one prompt of one dataset, over its rendered images, as a
    fraction of the dataset's total reward weight (1.0: every reward perfect on every image)."""

    dataset: str
    prompt: str
    score: float


def distinct_prompts(sampler: PromptSampler) -> list[tuple[str, str, dict[str, float]]]:
    """(dataset, prompt, reward weights) of every distinct prompt of every dataset, in file order."""
    seen, out = set(), []
    for prompt, dataset in sampler.entries:
        if (dataset.name, prompt) not in seen:
            seen.add((dataset.name, prompt))
            out.append((dataset.name, prompt, dataset.reward_weights))
    return out


@torch.no_grad()
def score_prompts(pipe, items: list[tuple[str, str, dict[str, float]]], rewards: Mapping[str, Reward], settings: RolloutSettings,
                  images_per_prompt: int, batch_size: int, seed: int) -> list[PromptScore]:
    """Render `images_per_prompt` images of each item with the pipeline's own (ODE) sampler at the rollout's size,
    steps and CFG, and score them with the rewards its dataset weighs.

    Args:
        items: (dataset, prompt, reward weights) triples.
        batch_size: prompts per pipeline call; call b is seeded with `seed + b`.
    """
    scores = []
    for b, start in enumerate(range(0, len(items), batch_size)):
        chunk = items[start : start + batch_size]
        prompts = [prompt for _, prompt, _ in chunk]
        images = pipe(prompts, height=settings.height, width=settings.width, num_inference_steps=settings.num_inference_steps,
                      guidance_scale=settings.guidance_scale, shift=settings.shift, num_images_per_prompt=images_per_prompt,
                      negative_prompt=settings.negative_prompt, generator=torch.Generator().manual_seed(seed + b)).images
        weights = [w for _, _, w in chunk for _ in range(images_per_prompt)]
        _, _, matrix, weight, total = score_images(images, [p for p in prompts for _ in range(images_per_prompt)], rewards, weights, images_per_prompt)
        scored_weight = torch.where(torch.isnan(matrix), torch.zeros_like(weight), weight).sum(1).reshape(len(chunk), images_per_prompt)
        # a prompt no reward could score (e.g. an OCR-weighted prompt without a quoted word) gets NaN: never hard
        fraction = torch.where(scored_weight > 0, total.reshape(len(chunk), images_per_prompt) / scored_weight.clamp_min(1e-12), float("nan"))
        fraction = fraction.mean(1)
        scores += [PromptScore(d, p, float(s)) for (d, p, _), s in zip(chunk, fraction)]
    return scores


def reweighted(sampler: PromptSampler, scores: list[PromptScore], threshold: float,
               hard_weight: float) -> tuple[PromptSampler, dict[str, dict[str, int]], float]:
    """The sampler with every entry whose prompt scored below `threshold` weighted `hard_weight` times more.

    Returns:
        the new sampler; per dataset, how many distinct prompts were scored and how many are hard; the share of
        draws that are hard prompts.
    """
    hard = {(s.dataset, s.prompt) for s in scores if s.score < threshold}
    is_hard = [(d.name, p) in hard for p, d in sampler.entries]
    out = sampler.scaled(torch.tensor([hard_weight if h else 1.0 for h in is_hard], dtype=torch.float64))
    summary: dict[str, dict[str, int]] = {}
    for s in scores:
        row = summary.setdefault(s.dataset, {"prompts": 0, "hard": 0})
        row["prompts"] += 1
        row["hard"] += int((s.dataset, s.prompt) in hard)
    return out, summary, out.probability(is_hard)


def save_scores(path: Path, scores: list[PromptScore], settings: dict) -> None:
    """Write the scores atomically (a resumed run must never read half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "scores": [vars(s) for s in scores]}, indent=0))
    os.replace(tmp, path)


def load_scores(path: Path, settings: dict, items: list[tuple[str, str, dict[str, float]]]) -> list[PromptScore] | None:
    """The stored scores when they were made with the same settings for the same prompts, else None (re-score)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    scores = [PromptScore(**row) for row in data.get("scores", [])]
    if data.get("settings") != settings or {(s.dataset, s.prompt) for s in scores} != {(d, p) for d, p, _ in items}:
        logger.warning("%s was made with other settings or prompts: scoring the prompts again", path)
        return None
    return scores
