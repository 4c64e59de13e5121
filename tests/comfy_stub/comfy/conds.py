"""Stand-in for `comfy.conds`: the conditioning wrappers `extra_conds` returns (batching by repeat and concat)."""

from __future__ import annotations

import math

import torch


class CONDRegular:
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, **kwargs):
        return self._copy_with(_repeat_to_batch_size(self.cond, batch_size))

    def can_concat(self, other) -> bool:
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [x.cond for x in others])

    def size(self):
        return list(self.cond.size())


class CONDList(CONDRegular):
    """A list of tensors (reference latents), each repeated to the batch and concatenated element-wise."""

    def process_cond(self, batch_size, **kwargs):
        return self._copy_with([_repeat_to_batch_size(c, batch_size) for c in self.cond])

    def can_concat(self, other) -> bool:
        return len(self.cond) == len(other.cond) and all(a.shape == b.shape for a, b in zip(self.cond, other.cond))

    def concat(self, others):
        return [torch.cat([c] + [x.cond[i] for x in others]) for i, c in enumerate(self.cond)]

    def size(self):
        total, channels = 0, 1
        for c in self.cond:
            total += math.prod(c.size())
            channels = c.size()[1] if c.dim() > 1 else channels
        return [1, channels, total // channels]


def _repeat_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        return tensor.repeat([math.ceil(batch_size / tensor.shape[0])] + [1] * (tensor.dim() - 1))[:batch_size]
    return tensor
