"""Cheap deterministic rewards (no model): for tests, smoke runs and the CPU behavioural check of the trainer."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .base import RewardOutput, check_batch


class BrightnessReward:
    """Mean pixel brightness in [0, 1]. Example: a white image scores 1.0, a black one 0.0."""

    name = "brightness"

    def __call__(self, images: list[Image.Image], prompts: list[str], **metadata) -> RewardOutput:
        check_batch(images, prompts, self.name)
        scores = [float(np.asarray(img.convert("L"), dtype=np.float64).mean() / 255.0) for img in images]
        return RewardOutput(scores=scores, details=[f"brightness {s:.3f}" for s in scores])


class ColorReward:
    """1 - mean distance (in [0, 1]) of the pixels to a target RGB colour. Example: `ColorReward((255, 0, 0))`
    gives a pure red image 1.0."""

    name = "color"

    def __init__(self, target: tuple[int, int, int] = (255, 0, 0)) -> None:
        self.target = np.asarray(target, dtype=np.float64) / 255.0

    def __call__(self, images: list[Image.Image], prompts: list[str], **metadata) -> RewardOutput:
        check_batch(images, prompts, self.name)
        scores = []
        for img in images:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
            scores.append(float(1.0 - np.linalg.norm(pixels - self.target, axis=-1).mean() / np.sqrt(3.0)))
        return RewardOutput(scores=scores, details=[f"colour match {s:.3f}" for s in scores])
