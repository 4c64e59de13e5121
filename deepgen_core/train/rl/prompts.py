"""Prompt sampling for RL (reference notes §6.2): each prompt carries its dataset's reward weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...rewards.weights import PromptDataset, RewardDatasetConfig, load_reward_config


@dataclass(frozen=True)
class PromptDraw:
    prompt: str
    dataset: str
    reward_weights: dict[str, float]


class PromptSampler:
    """Draws prompts with replacement. 'sample_proportional': each prompt weighs its dataset's `sample_weight`
    (P(dataset) ~ size x weight, the reference's mode); 'dataset_proportional': P(dataset) ~ weight."""

    def __init__(self, config: RewardDatasetConfig) -> None:
        self.config = config
        self.entries = [(p, d) for d in config.datasets for p in d.prompts]
        per_dataset = {d.name: (d.sample_weight if config.sampling_mode == "sample_proportional" else d.sample_weight / len(d.prompts)) for d in config.datasets}
        self.weights = torch.tensor([per_dataset[d.name] for _, d in self.entries], dtype=torch.float64)

    def scaled(self, factors: torch.Tensor) -> PromptSampler:
        """A copy whose entry i is drawn `factors[i]` times as often (the hard-prompt curriculum)."""
        out = PromptSampler(self.config)
        out.weights = self.weights * factors.to(self.weights.dtype)
        return out

    def probability(self, mask: list[bool]) -> float:
        """P(a draw is one of the entries where `mask` is True)."""
        return float(self.weights[torch.tensor(mask, dtype=torch.bool)].sum() / self.weights.sum())

    @classmethod
    def from_rewards_config(cls, datasets: str | None, prompts: list[str], weights: dict[str, float]) -> PromptSampler:
        """From a YAML path, or from inline prompts sharing one set of reward weights."""
        if datasets is not None:
            return cls(load_reward_config(datasets))
        return cls(RewardDatasetConfig((PromptDataset("inline", tuple(prompts), 1.0, dict(weights)),)))

    @property
    def reward_names(self) -> list[str]:
        return self.config.reward_names

    def draw(self, n: int, generator: torch.Generator) -> list[PromptDraw]:
        """`n` prompts drawn with replacement from `generator` (CPU)."""
        index = torch.multinomial(self.weights, n, replacement=True, generator=generator).tolist()
        return [PromptDraw(self.entries[i][0], self.entries[i][1].name, self.entries[i][1].reward_weights) for i in index]
