"""Step caching (TeaCache-style): skip a DiT call when its input barely changed since the last step.

Per denoising loop, each DiT call site gets a `StepCache` wrapped around the velocity function. At every step it
forms the cheap timestep-modulated input of the first block (patch-embedded target latents through block 0's
adaLN `norm1`), measures its relative L1 change from the previous step, and accumulates it. While the accumulated
change stays below `threshold`, the step reuses the last computed velocity; once it passes, the DiT runs and the
accumulator resets. The first and last steps always run. One decision covers the whole call (the [uncond ; cond]
CFG rows of a batched call together), so guidance never mixes a fresh and a stale branch.

NOT exact (a skipped step takes an Euler step with the previous velocity); `threshold = 0` switches it off and
leaves the velocity function untouched. Reference tokens of edits are left out of the indicator: they are clean
latents that only the modulation changes, and counting them would dilute the change of the target.

Why not diffusers' `apply_first_block_cache` / `MagCacheConfig` hooks: they decide inside the transformer's
forward, so a CUDA-graph replay (our default on CUDA) or a fully compiled forward would freeze one decision into
the captured graph. Deciding outside the velocity function keeps graphs, compile and CFG parallelism unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..validation import Limit, check_number

logger = logging.getLogger(__name__)

MAX_THRESHOLD = 1.0  # accumulated relative L1 change; above ~0.5 almost every step is skipped


STEP_CACHE_LIMIT = Limit(0.0, MAX_THRESHOLD, default=0.0)


def check_step_cache(threshold: object) -> float:
    """`threshold` as a float if it is a number in [0, MAX_THRESHOLD], else a `DeepGenInputError` naming the value and
    the nearest valid one (`validation.check_number`)."""
    return float(check_number("step_cache", threshold, STEP_CACHE_LIMIT, hint="0 switches step caching off; 0.05-0.2 skip some DiT calls."))


def first_block_input(transformer: nn.Module, latents: torch.Tensor, pooled: torch.Tensor, timestep: torch.Tensor,
                      modulation: torch.Tensor | None) -> torch.Tensor:
    """Block 0's adaLN-modulated image tokens (B, N, D) for the target latents (B, C, H, W): the cheap indicator.

    `modulation`: a (B, W) precomputed row (`DeepGenSD3Transformer.modulation`) or None (computed from `timestep`
    and `pooled`, as the forward does).
    """
    tokens = transformer.pos_embed(latents)
    if modulation is None:
        temb = transformer.time_text_embed(timestep, pooled)
    else:
        start, stop = transformer._modulation_columns[0]
        temb = modulation[:, start:stop]
    return transformer.transformer_blocks[0].norm1(tokens, emb=temb)[0]


class StepCache:
    """A velocity function that reuses its last output while the first block's input barely changes.

    Args:
        velocity_fn: `fn(latents, context, pooled, timestep, reference_latents, modulation)` (the pipeline's).
        transformer: the DiT (`DeepGenSD3Transformer`).
        num_steps: the loop's steps; call k is step k (one instance per call site and loop).
        threshold: accumulated relative L1 change of the indicator that triggers a recompute (> 0).
        leader: another call site of the same loop, called before this one at every step, whose decisions this
            one follows (CFG branches encoded apart run as two calls a step: both must be fresh or both reused).
    """

    def __init__(self, velocity_fn: Callable[..., torch.Tensor], transformer: nn.Module, num_steps: int, threshold: float,
                 leader: StepCache | None = None) -> None:
        self.velocity_fn, self.transformer, self.num_steps, self.threshold = velocity_fn, transformer, num_steps, threshold
        self.leader = leader
        self.step = 0
        self.accumulated = 0.0
        self.computed: list[bool] = []  # per step: the DiT ran (True) or the velocity was reused (False)
        self._previous_input: torch.Tensor | None = None
        self._velocity: torch.Tensor | None = None

    def __call__(self, latents: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor, timestep: torch.Tensor,
                 reference_latents: Any, modulation: torch.Tensor | None = None) -> torch.Tensor:
        if self.leader is not None:
            compute = self.leader.computed[self.step] or self._velocity is None
        else:
            indicator = first_block_input(self.transformer, latents, pooled, timestep, modulation)
            compute = self._should_compute(indicator)
            self._previous_input = indicator
        if compute:
            self._velocity = self.velocity_fn(latents, context, pooled, timestep, reference_latents, modulation)
        self.computed.append(compute)
        self.step += 1
        return self._velocity

    def _should_compute(self, indicator: torch.Tensor) -> bool:
        previous = self._previous_input
        edge = self.step == 0 or self.step >= self.num_steps - 1
        if edge or previous is None or self._velocity is None or previous.shape != indicator.shape:
            self.accumulated = 0.0
            return True
        # One host sync per step; the mean is over the whole batch so CFG rows share one decision.
        change = ((indicator - previous).float().abs().mean() / previous.float().abs().mean().clamp_min(1e-12)).item()
        self.accumulated += change
        if self.accumulated < self.threshold:
            return False
        self.accumulated = 0.0
        return True

    @property
    def skipped(self) -> int:
        """DiT calls skipped so far."""
        return self.computed.count(False)
