"""Prompt templates (reference notes §2.1): no system turn, left padding, image blocks before the instruction."""

from __future__ import annotations

from collections.abc import Sequence

from .config import GENERATION_TEMPLATE, IMAGE_END_TOKEN, IMAGE_PAD_TOKEN, IMAGE_START_TOKEN, INSTRUCTION_TEMPLATE


def text_to_image_prompt(text: str) -> str:
    """`<|im_start|>user\\nGenerate an image: {text}<|im_end|>\\n<|im_start|>assistant\\n` (empty text allowed)."""
    return INSTRUCTION_TEMPLATE.format(input=GENERATION_TEMPLATE.format(input=text))


def edit_prompt(text: str, image_token_counts: Sequence[int]) -> str:
    """One `<|vision_start|><|image_pad|>*n<|vision_end|>` block per reference, then a newline and the instruction."""
    blocks = "".join(IMAGE_START_TOKEN + IMAGE_PAD_TOKEN * n + IMAGE_END_TOKEN for n in image_token_counts)
    return INSTRUCTION_TEMPLATE.format(input=blocks + "\n" + text)
