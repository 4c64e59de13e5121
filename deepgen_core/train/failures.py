"""What a rank says when a multi-process run breaks: the step, the newest checkpoint and how to resume.

When one rank dies (killed, out of memory, a lost node), the others fail at their next collective: gloo raises at
once ("Connection reset by peer"), NCCL once `distributed.timeout_minutes` has passed. A single-node launcher
(torchrun, accelerate launch) also stops the surviving workers itself. Either way every process exits non-zero; this
module only makes the survivors' last words useful: which rank, which step, and the checkpoint a re-run resumes from.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def failure_note(rank: int, world: int, step: int, latest: Path | None) -> str:
    """The note added to a collective failure of a run of `world` processes."""
    resume = (f"the newest complete checkpoint is {latest}: run the same command again to resume from it (resume: auto)"
              if latest is not None else "no complete checkpoint exists yet: a re-run starts from the beginning")
    return (f"rank {rank} of {world} stopped at step {step + 1}: a collective operation failed, usually because another rank "
            f"died or hung (see that rank's log for the cause); {resume}.")


@contextlib.contextmanager
def explain_rank_failure(rank: int, world: int, step: int, latest: Callable[[], Path | None]) -> Iterator[None]:
    """Around one training step of a run of `world` processes: a `RuntimeError` (what gloo and NCCL collectives raise, including
    `torch.distributed.DistError`) is logged with `failure_note` and re-raised with the note attached.

    Args:
        rank, world: this process's rank and the number of processes.
        step: the number of completed steps.
        latest: returns the newest complete checkpoint folder, or None.
    """
    try:
        yield
    except RuntimeError as exc:
        if world > 1:
            note = failure_note(rank, world, step, latest())
            logger.error("%s (%s: %s)", note, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            exc.add_note(note)
        raise
