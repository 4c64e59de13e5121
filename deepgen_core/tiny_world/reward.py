"""The tiny world's MR-GRPO reward (`shape_world` in `deepgen_core.rewards.REWARDS`): how many of the prompt's
attributes the image shows."""

from __future__ import annotations

from PIL import Image

from ..rewards.base import RewardOutput, check_batch
from .detect import Detection, detect
from .parse import parse_prompt
from .world import Obj

ATTRIBUTES = ("colour", "shape", "size", "position")


def attribute_matches(target: Obj, background: str, detection: Detection) -> dict[str, bool]:
    """Per attribute (colour, shape, size, position, background): does the detection show it?

    The object compared is the detected one that matches most attributes (ties: the larger one); without a
    detected object only the background can match.
    """
    best: dict[str, bool] = dict.fromkeys(ATTRIBUTES, False)
    for found in detection.objects:  # largest first, so ties keep the larger object
        matches = {a: getattr(found.obj, a) == getattr(target, a) for a in ATTRIBUTES}
        if sum(matches.values()) > sum(best.values()):
            best = matches
    return {**best, "background": detection.background == background}


class ShapeWorldReward:
    """Mean of the matched attributes (colour, shape, size, position, background) of a 1-object tiny-world
    prompt, minus `extra_penalty` per additional detected object, clipped to [0, 1]; `None` for prompts it
    cannot parse (text prompts, free text).

    Example::

        from deepgen_core.tiny_world import Obj, Scene, render
        image = render(Scene("blue", (Obj("circle", "red", "small", "left"),)))
        ShapeWorldReward()([image], ["a small red circle on the left, blue background"]).scores  # [1.0]
    """

    name = "shape_world"

    def __init__(self, extra_penalty: float = 0.2) -> None:
        self.extra_penalty = extra_penalty  # discourages drawing many objects to hit the attributes by chance

    def score(self, image: Image.Image, prompt: str) -> tuple[float | None, str]:
        """(score or None, a short note) for one image."""
        parsed = parse_prompt(prompt)
        if parsed is None:
            return None, "not a 1-object tiny-world prompt: not scored"
        target, background = parsed
        detection = detect(image)
        matches = attribute_matches(target, background, detection)
        extra = max(len(detection.objects) - 1, 0)
        value = min(max(sum(matches.values()) / len(matches) - self.extra_penalty * extra, 0.0), 1.0)
        missed = [a for a, ok in matches.items() if not ok]
        return value, f"{len(detection.objects)} object(s); missed {missed or 'nothing'}: {value:.2f}"

    def __call__(self, images: list[Image.Image], prompts: list[str], **metadata) -> RewardOutput:
        check_batch(images, prompts, self.name)
        results = [self.score(image, prompt) for image, prompt in zip(images, prompts)]
        return RewardOutput(scores=[s for s, _ in results], details=[d for _, d in results])
