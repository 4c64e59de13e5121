"""CFG parallelism: the rows of each DiT call (the [uncond ; cond] CFG batch) split over the ranks of a process group.

Every rank runs the whole pipeline with the same inputs and seed: the encoder, the latents, the scheduler and the
decoder are replicated. Only the DiT call, which is almost all of the time, is shared: rank r computes its slice of
the call's rows and an all-gather gives every rank the full velocity, so every rank holds the same latents after each
step and returns the same image.

With two ranks and one image, rank 0 runs the unconditional branch and rank 1 the conditional one. In general a
call of N rows gives each rank ceil(N / world) rows: with batch B and CFG (N = 2B), up to 2B ranks do useful work;
ranks beyond that (or the last rank, when N does not divide) compute padding rows that are thrown away, so more
ranks than rows cost memory and give no speed. Without CFG (`guidance_scale <= 1`) the B rows are split the same way.

Usage (one process per GPU, e.g. `torchrun --nproc_per_node 2 script.py`)::

    torch.distributed.init_process_group("nccl")
    pipe = DeepGenPipeline.from_pretrained(path, device=f"cuda:{local_rank}", torch_dtype=torch.bfloat16)
    enable_cfg_parallel(pipe)
    image = pipe(prompt, generator=torch.Generator().manual_seed(0)).images[0]   # the same on every rank
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.distributed as dist

from ..errors import DeepGenInputError

logger = logging.getLogger(__name__)

ATTRIBUTE = "cfg_parallel"  # the pipeline attribute the denoising loop reads (None or absent: off)


def row_slices(rows: int, world: int) -> list[tuple[int, int]]:
    """The [start, stop) rows of each rank for a call of `rows` rows: ceil(rows / world) per rank, the last ranks
    with fewer (possibly none).

    >>> row_slices(2, 2), row_slices(2, 4), row_slices(5, 2)
    ([(0, 1), (1, 2)], [(0, 1), (1, 2), (2, 2), (2, 2)], [(0, 3), (3, 5)])
    """
    per_rank = math.ceil(rows / world)
    return [(min(r * per_rank, rows), min((r + 1) * per_rank, rows)) for r in range(world)]


def _take(value: Any, start: int, stop: int, pad: int) -> Any:
    """Rows [start, stop) of a batch-major tensor or list, padded with `pad` copies of the batch's last row."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        part = value[start:stop]
        return torch.cat([part, value[-1:].expand(pad, *value.shape[1:])]) if pad else part
    part = list(value[start:stop])
    return part + [value[-1]] * pad


class CFGParallel:
    """Splits the rows of every DiT call over the ranks of `group` and all-gathers the velocities.

    Args:
        group: the process group (default: the default group). Every rank of it must call the pipeline with the
            same arguments: each rank's latents depend on every other rank's rows.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise DeepGenInputError("CFG parallelism needs torch.distributed initialised: call torch.distributed.init_process_group() "
                                    "in every process (launched by torchrun or accelerate launch) before enable_cfg_parallel.")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if self.world < 2:
            raise DeepGenInputError(f"CFG parallelism needs at least 2 ranks, the process group has {self.world}; run one process without it.")

    def wrap(self, velocity_fn):
        """The pipeline's `velocity_fn(latents, context, pooled, timestep, reference_latents, modulation)` for this
        rank's rows, gathered back to the full batch."""

        def run(latents, context, pooled, timestep, reference_latents, modulation=None):
            rows = latents.shape[0]
            start, stop = row_slices(rows, self.world)[self.rank]
            per_rank = math.ceil(rows / self.world)
            pad = per_rank - (stop - start)
            if pad == per_rank:  # no real row on this rank: run the batch's last row as padding
                start = stop = rows
            args = [_take(v, start, stop, pad) for v in (latents, context, pooled, timestep, reference_latents, modulation)]
            mine = velocity_fn(*args).contiguous()
            return self.gather(mine, rows)

        return run

    def gather(self, mine: torch.Tensor, rows: int) -> torch.Tensor:
        """All ranks' (ceil(rows / world), ...) slices -> the (rows, ...) batch, the same tensor on every rank."""
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        return torch.cat(parts)[:rows]


def enable_cfg_parallel(pipe: Any, group: dist.ProcessGroup | None = None) -> CFGParallel:
    """Switch CFG parallelism on for `pipe` (a `DeepGenPipeline`): its DiT calls are split over `group`.

    Every rank must hold the same weights and call `pipe` with the same arguments and seed. The pipeline must be on
    this rank's device (NCCL: `cuda:<local rank>`; gloo: the CPU). Returns the installed `CFGParallel`.
    """
    parallel = CFGParallel(group)
    setattr(pipe, ATTRIBUTE, parallel)
    logger.info("CFG parallelism on: rank %d of %d", parallel.rank, parallel.world)
    return parallel


def disable_cfg_parallel(pipe: Any) -> None:
    """Back to one process's DiT calls."""
    setattr(pipe, ATTRIBUTE, None)


def parallel_velocity(pipe: Any, velocity_fn):
    """The pipeline's hook: `velocity_fn` split over the ranks when CFG parallelism is on for `pipe`, else unchanged."""
    parallel = getattr(pipe, ATTRIBUTE, None)
    return velocity_fn if parallel is None else parallel.wrap(velocity_fn)

