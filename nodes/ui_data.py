"""Structured UI outputs for the pack's web extension (`web/js/deepgen_cards.js`): per-image thumbnails, reward
scores and advantages as plain JSON, sent next to the standard `images` entry so that API users keep their PNGs.

Keys: `deepgen_rollout` (DeepGen RL Rollout Preview) and `deepgen_ocr` (DeepGen OCR Reward); each holds one dict
(ComfyUI merges UI lists across batches, so the payload is wrapped in a list of one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._comfy import ui

# Group totals closer than this count as equal: the group gives every image advantage 0 (no learning signal).
ZERO_VARIANCE = 1e-6


def thumbnails(images: torch.Tensor, cls) -> list[dict]:
    """Save (B, H, W, 3) images as temp PNGs the way ComfyUI's preview does; one `{filename, subfolder, type}` each."""
    return list(ui.PreviewImage(images, cls=cls).as_dict()["images"])


def _score(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def rollout_payload(preview, weights: dict[str, float], group_size: int, refs: Sequence[dict], steps: int) -> dict:
    """The rollout preview as cards: one entry per image (thumbnail, per-reward score and detail, weighted total,
    group advantage) and one per group (prompt, members, whether its totals have zero variance)."""
    images = [{
        "index": i, "group": i // group_size, "prompt": prompt, "image": refs[i],
        "scores": {n: _score(preview.scores[n][i]) for n in weights},
        "details": {n: preview.details[n][i] for n in weights},
        "total": _score(preview.total[i]), "advantage": _score(preview.advantages[i]),
    } for i, prompt in enumerate(preview.prompts)]
    groups = []
    for g in range(len(images) // group_size):
        totals = [preview.total[i] for i in range(g * group_size, (g + 1) * group_size)]
        groups.append({"index": g, "prompt": preview.prompts[g * group_size], "members": list(range(g * group_size, (g + 1) * group_size)),
                       "zero_variance": max(totals) - min(totals) < ZERO_VARIANCE})
    return {"kind": "rollout", "rewards": list(weights), "weights": dict(weights), "group_size": group_size, "steps": steps,
            "images": images, "groups": groups}


def ocr_payload(target: str | None, scores: Sequence[float | None], details: Sequence[str], refs: Sequence[dict]) -> dict:
    """OCR scores as cards: the target text and, per image, its thumbnail, score (None: not scored) and what was read."""
    return {"kind": "ocr", "target": target, "images": [
        {"index": i, "image": ref, "score": _score(s), "detail": d} for i, (s, d, ref) in enumerate(zip(scores, details, refs))
    ]}
