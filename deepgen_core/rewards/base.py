"""The reward interface: images + prompts in, one score per image (or `None`: not scored) out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

logger = logging.getLogger(__name__)


@dataclass
class RewardOutput:
    """`scores[i]`: the reward of image i, or `None` when the reward does not apply to it (an OCR reward on a
    prompt without quoted text) or its scorer failed; `details[i]`: a short human-readable note (recognised
    text, the failure, ...); `failures`: how many images could not be scored because of an error."""

    scores: list[float | None]
    details: list[str] = field(default_factory=list)
    failures: int = 0

    def __post_init__(self) -> None:
        if not self.details:
            self.details = [""] * len(self.scores)


@runtime_checkable
class Reward(Protocol):
    """A reward function. Example::

        reward = BrightnessReward()
        reward([Image.new("RGB", (8, 8), "white")], ["a white square"]).scores  # [1.0]
    """

    name: str

    def __call__(self, images: list[Image.Image], prompts: list[str], **metadata) -> RewardOutput: ...


def check_batch(images: Sequence[Image.Image], prompts: Sequence[str], name: str) -> None:
    """Raise a ValueError unless there is one prompt per PIL image."""
    if len(images) != len(prompts):
        raise ValueError(f"reward {name!r}: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image.")
    bad = [i for i, img in enumerate(images) if not isinstance(img, Image.Image)]
    if bad:
        raise ValueError(f"reward {name!r}: images {bad} are not PIL images; convert tensors with deepgen_core.image_processing first.")
