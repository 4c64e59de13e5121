"""Reward functions for MR-GRPO, behind one small interface (`Reward`: images + prompts -> `RewardOutput`).

`REWARDS` is the registry (name -> factory); `build_reward` makes one by name with its options. Each reward runs
in-process or behind `deepgen reward-server` (JSON over HTTP, `HTTPReward` is the client).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import DeepGenInputError
from .base import Reward, RewardOutput, check_batch
from .clip import CLIPReward
from .ocr import OCRReward, extract_target_text, text_accuracy
from .service import HTTPReward
from .simple import BrightnessReward, ColorReward
from .vlm import VLMPairwiseReward

def _shape_world(**options) -> Reward:
    """The tiny world's reward (`deepgen_core.tiny_world.reward`), imported on use: the tiny world builds on this
    package (its evaluation uses the OCR reward), not the other way round."""
    from ..tiny_world.reward import ShapeWorldReward

    return ShapeWorldReward(**options)


REWARDS: dict[str, Callable[..., Reward]] = {
    "brightness": BrightnessReward,
    "color": ColorReward,
    "ocr": OCRReward,
    "clip_sim": CLIPReward,
    "unifiedreward_think": VLMPairwiseReward,
    "shape_world": _shape_world,
}


def build_reward(name: str, **options) -> Reward:
    """Build the reward `name` (see `REWARDS`) with its constructor options (e.g. `path=` for clip_sim)."""
    if name not in REWARDS:
        raise DeepGenInputError(f"unknown reward {name!r}; choose from {sorted(REWARDS)}.")
    return REWARDS[name](**options)


__all__ = [
    "REWARDS", "BrightnessReward", "CLIPReward", "ColorReward", "HTTPReward", "OCRReward", "Reward", "RewardOutput",
    "VLMPairwiseReward", "build_reward", "check_batch", "extract_target_text", "text_accuracy",
]
