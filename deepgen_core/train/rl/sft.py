"""The auxiliary SFT data stream of MR-GRPO (reference notes §6.8) over the stage-1/2 data pieces."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch

from ..config import DataConfig
from ..data import MixedDataset, build_dataloader
from ..modeling import DeepGenTrainModel, StepNoise, draw_step_noise
from ..sampler import MultiSourceBatchSampler
from ..trainer import apply_prompt_dropout, derived_seed


class SFTAuxStream:
    """Text-to-image batches for the auxiliary flow-matching loss; batch k of rank r is a pure function of
    (seed, k, r), so resuming at RL step s continues where the uninterrupted run would be.

    Args:
        data: text-to-image sources (stage-2 formats), prompt dropout (reference: 0.1).
        batch_size: images per SFT batch per rank.
    """

    def __init__(self, data: DataConfig, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.data, self.batch_size, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self.dataset = MixedDataset(data)
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._next_index = -1

    def _batches(self, start: int) -> Iterator[dict[str, Any]]:
        sources = self.dataset.sources
        sampler = MultiSourceBatchSampler([len(s) for s in sources], [s.source.task for s in sources], [s.source.weight for s in sources],
                                          (0, 1), self.batch_size, self.rank, self.world, self.seed, start=start)
        return iter(build_dataloader(self.dataset, sampler.batches(), self.data.num_workers))

    def batch(self, index: int, model: DeepGenTrainModel) -> tuple[dict[str, Any], StepNoise]:
        """SFT batch `index` (prompt dropout applied) and its noise."""
        if self._iterator is None or index != self._next_index:
            self._iterator = self._batches(index)
        batch = next(self._iterator)
        self._next_index = index + 1
        seed = derived_seed(self.seed, index, self.rank, 3)
        batch["texts"] = apply_prompt_dropout(batch["texts"], self.data.prompt_dropout, random.Random(seed))
        return batch, draw_step_noise(model, batch, torch.Generator().manual_seed(seed))
