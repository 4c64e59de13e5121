"""Prompt templates (reference notes §2.1): no system turn, left padding, image blocks before the instruction."""

from __future__ import annotations

from collections.abc import Sequence

from .config import PromptTemplate

REFERENCE_TEMPLATE = PromptTemplate()


def text_to_image_prompt(text: str, template: PromptTemplate = REFERENCE_TEMPLATE) -> str:
    """`<|im_start|>user\\nGenerate an image: {text}<|im_end|>\\n<|im_start|>assistant\\n` (empty text allowed)."""
    return template.instruction.format(input=template.generation.format(input=text))


def edit_prompt(text: str, image_token_counts: Sequence[int], template: PromptTemplate = REFERENCE_TEMPLATE) -> str:
    """One `<|vision_start|><|image_pad|>*n<|vision_end|>` block per reference, then a newline and the instruction."""
    blocks = "".join(template.image_start + template.image_pad * n + template.image_end for n in image_token_counts)
    return template.instruction.format(input=blocks + "\n" + text)
