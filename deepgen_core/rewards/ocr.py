"""Text-rendering accuracy with an offline OCR engine (rapidocr ships its ONNX models; reference notes §6.5).

Fixes reference bug §9.11: a prompt without quoted text is simply not scored (`None`), and a failure on one image
never zeroes the batch.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence

from PIL import Image

from .base import RewardOutput, check_batch

logger = logging.getLogger(__name__)

# Straight and typographic double quotes; the reference's old scorer takes the first pair of straight quotes.
_QUOTED = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d')


def extract_target_text(prompt: str) -> str | None:
    """The text an image should show: the first double-quoted segment of `prompt`, or None without one.

    Example: `extract_target_text('a sign saying "OPEN 24h"')` -> `'OPEN 24h'`.
    """
    for match in _QUOTED.finditer(prompt):
        text = match.group(1) if match.group(1) is not None else match.group(2)
        if text.strip():
            return text
    return None


def normalize_text(text: str) -> str:
    """Spaces removed, lower-cased (as the reference's scorer compares)."""
    return "".join(text.split()).lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def text_accuracy(recognized: str, target: str) -> float:
    """1 - d / len(target) with d = 0 when the target appears in the recognised text, else the edit distance
    capped at len(target) (the reference's default scorer), both normalised by `normalize_text`."""
    rec, tgt = normalize_text(recognized), normalize_text(target)
    if not tgt:
        raise ValueError("the OCR target text is empty after removing spaces; quote the text to render.")
    distance = 0 if tgt in rec else min(levenshtein(rec, tgt), len(tgt))
    return 1.0 - distance / len(tgt)


class OCRReward:
    """OCR accuracy of the quoted prompt text. The engine is built on first use (CPU, offline models).

    Example::

        OCRReward().score_texts([image_with_text], ["HELLO"]).scores  # [1.0] when read correctly
    """

    name = "ocr"

    def __init__(self, use_angle_classifier: bool = False) -> None:
        self.use_angle_classifier = use_angle_classifier  # the reference runs without one
        self._engine = None
        self._lock = threading.Lock()

    def _get_engine(self):
        with self._lock:
            if self._engine is None:
                # heavy import, deferred until the first score
                from rapidocr import RapidOCR

                self._engine = RapidOCR()
            return self._engine

    def recognize(self, image: Image.Image) -> str:
        """All recognised text lines of `image`, concatenated."""
        # A PIL image tells rapidocr the channel order (it converts RGB to its BGR itself).
        result = self._get_engine()(image.convert("RGB"), use_cls=self.use_angle_classifier)
        return "".join(result.txts or ())

    def score_texts(self, images: Sequence[Image.Image], targets: Sequence[str | None]) -> RewardOutput:
        """Score each image against an explicit target text (`None` or empty: not scored).

        Args:
            images: N PIL images.
            targets: N target strings (or None).
        """
        if len(images) != len(targets):
            raise ValueError(f"OCR reward: got {len(images)} images but {len(targets)} target texts; pass one target (or None) per image.")
        scores: list[float | None] = []
        details: list[str] = []
        failures = 0
        for image, target in zip(images, targets):
            if target is None or not normalize_text(target):
                scores.append(None)
                details.append("no quoted text: not scored")
                continue
            try:
                recognized = self.recognize(image)
            except (RuntimeError, ValueError, OSError) as exc:  # onnxruntime / decoding errors of one image
                logger.warning("OCR failed on one image: %s", exc)
                failures += 1
                scores.append(None)
                details.append(f"OCR failed: {exc}")
                continue
            score = text_accuracy(recognized, target)
            scores.append(score)
            details.append(f"read {recognized!r} for {target!r}: {score:.3f}")
        return RewardOutput(scores=scores, details=details, failures=failures)

    def __call__(self, images: list[Image.Image], prompts: list[str], **metadata) -> RewardOutput:
        check_batch(images, prompts, self.name)
        return self.score_texts(images, [extract_target_text(p) for p in prompts])
