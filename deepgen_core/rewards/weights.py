"""Per-prompt-dataset reward weights and sampling weights from a YAML file (reference notes §6.2).

Format (paths relative to the YAML file)::

    sampling_mode: sample_proportional      # P(dataset) proportional to size x sample_weight
    datasets:
      text_render:
        path: prompts/text_render.txt       # one prompt per line
        sample_weight: 3.0
        reward_weights: {unifiedreward_think: 0.2, clip_sim: 0.1, ocr: 0.7}
      general:
        path: prompts/general.txt
        reward_weights: {unifiedreward_think: 0.7, clip_sim: 0.3}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DeepGenInputError

SAMPLING_MODES = ("sample_proportional", "dataset_proportional")


@dataclass(frozen=True)
class PromptDataset:
    """One prompt file with its sampling weight and its reward weights (name -> weight; missing rewards: 0)."""

    name: str
    prompts: tuple[str, ...]
    sample_weight: float = 1.0
    reward_weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardDatasetConfig:
    datasets: tuple[PromptDataset, ...]
    sampling_mode: str = "sample_proportional"

    @property
    def reward_names(self) -> list[str]:
        """Every reward named by any dataset, sorted (the reference evaluates all of them on every image)."""
        return sorted({name for d in self.datasets for name in d.reward_weights})


def _read_prompts(path: Path, dataset: str) -> tuple[str, ...]:
    if not path.is_file():
        raise DeepGenInputError(f"dataset {dataset!r}: prompt file {str(path)!r} does not exist; fix its 'path' in the YAML.")
    prompts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not prompts:
        raise DeepGenInputError(f"dataset {dataset!r}: prompt file {str(path)!r} has no prompts (one per line).")
    return prompts


def parse_reward_config(data: dict, base_dir: Path) -> RewardDatasetConfig:
    """Validate a loaded YAML mapping (see the module docstring); prompt paths resolve against `base_dir`."""
    mode = data.get("sampling_mode", "sample_proportional")
    if mode not in SAMPLING_MODES:
        raise DeepGenInputError(f"sampling_mode must be one of {list(SAMPLING_MODES)}, got {mode!r}.")
    entries = data.get("datasets")
    if not isinstance(entries, dict) or not entries:
        raise DeepGenInputError("the reward YAML needs a non-empty 'datasets' mapping: name -> {path, sample_weight, reward_weights}.")
    datasets = []
    for name, entry in entries.items():
        weights = {str(k): float(v) for k, v in (entry.get("reward_weights") or {}).items()}
        if not weights:
            raise DeepGenInputError(f"dataset {name!r} has no reward_weights; give at least one, e.g. {{ocr: 1.0}}.")
        if "prompts" in entry:
            prompts = tuple(str(p) for p in entry["prompts"])
        else:
            prompts = _read_prompts(base_dir / entry["path"], name)
        sample_weight = float(entry.get("sample_weight", 1.0))
        if sample_weight <= 0:
            raise DeepGenInputError(f"dataset {name!r}: sample_weight must be > 0, got {sample_weight}.")
        datasets.append(PromptDataset(str(name), prompts, sample_weight, weights))
    return RewardDatasetConfig(tuple(datasets), mode)


def load_reward_config(path: str | Path) -> RewardDatasetConfig:
    """Read the reward/prompt YAML at `path` (safe YAML loader)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DeepGenInputError(f"reward config {str(path)!r} does not exist.")
    return parse_reward_config(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, path.parent)


def weight_matrix(per_sample: list[dict[str, float]], reward_names: list[str]) -> torch.Tensor:
    """(N, K) fp32 weights: row i holds sample i's weight for each reward (0 where its dataset names none)."""
    return torch.tensor([[w.get(k, 0.0) for k in reward_names] for w in per_sample], dtype=torch.float32).reshape(len(per_sample), len(reward_names))


def score_matrix(scores: dict[str, list[float | None]], reward_names: list[str]) -> torch.Tensor:
    """(N, K) fp32 rewards with NaN where a reward did not score an image."""
    columns = [[float("nan") if s is None else float(s) for s in scores[k]] for k in reward_names]
    return torch.tensor(columns, dtype=torch.float32).T.reshape(-1, len(reward_names))
