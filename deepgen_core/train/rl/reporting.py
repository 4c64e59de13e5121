"""RL metrics (per-reward means, failures, advantage statistics) and saved rollout grids with their rewards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image

from .rollout import ScoredRollout


def reward_metrics(scored: ScoredRollout) -> dict[str, float]:
    """`reward` (mean weighted total over the images that got a score; NaN when none did: a missing reward is never
    0), `reward_scored` (share of the weighted (image, reward) pairs that were scored), `reward/<name>` (mean over
    scored images), `reward_scored/<name>` (fraction scored), `reward_failures/<name>`, and advantage statistics,
    over all ranks when the rewards were gathered."""
    rewards = scored.all_rewards if scored.all_rewards is not None else scored.rewards
    weights = scored.all_weights if scored.all_weights is not None else scored.weights
    wanted = weights > 0
    got = wanted & ~torch.isnan(rewards)
    rows = got.any(1)
    total = (torch.nan_to_num(rewards) * weights).sum(1)
    out = {"reward": float(total[rows].mean()) if rows.any() else math.nan,
           "reward_scored": float(got.sum() / wanted.sum()) if wanted.any() else 1.0}
    for k, name in enumerate(scored.reward_names):
        column = rewards[:, k]
        scored_mask = ~torch.isnan(column)
        out[f"reward/{name}"] = float(column[scored_mask].mean()) if scored_mask.any() else math.nan
        out[f"reward_scored/{name}"] = float(scored_mask.float().mean())
        out[f"reward_failures/{name}"] = float(scored.outputs[name].failures)
    adv = scored.advantages
    out.update({"advantage/mean": float(adv.mean()), "advantage/std": float(adv.std()) if adv.numel() > 1 else 0.0,
                "advantage/abs_max": float(adv.abs().max())})
    return out


def save_rollout_grid(scored: ScoredRollout, folder: Path, rank: int) -> Path:
    """The first group's G images side by side (`rank<r>.png`) and a JSON with prompt, scores, details and
    advantages per image (`rank<r>.json`)."""
    ro = scored.rollout
    g = ro.group_size
    images = ro.images[:g]
    w, h = images[0].size
    grid = Image.new("RGB", (w * g, h))
    for i, img in enumerate(images):
        grid.paste(img, (i * w, 0))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank{rank}.png"
    grid.save(path)
    record = {"prompt": ro.prompts[0], "images": [
        {"index": i, "advantage": float(scored.advantages[i]),
         "total": float(scored.total[i]) if any(scored.outputs[n].scores[i] is not None for n in scored.reward_names) else None,
         "scores": {n: scored.outputs[n].scores[i] for n in scored.reward_names},
         "details": {n: scored.outputs[n].details[i] for n in scored.reward_names}} for i in range(g)]}
    (folder / f"rank{rank}.json").write_text(json.dumps(record, indent=1))
    return path
