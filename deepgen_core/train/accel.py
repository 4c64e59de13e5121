"""accelerate / DeepSpeed setup shared by every stage: one code path for 1 process, DDP and ZeRO, 1 to N nodes.

The launcher (`accelerate launch`, `torchrun`, `deepspeed`) decides the world; this module only turns the
config into an `Accelerator`. DeepSpeed JSON files under `train/accelerate/` may keep "auto" values; they are
resolved here from the config, because no DataLoader is passed to `prepare` (each rank samples its own data).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import AutocastKwargs, DistributedType, InitProcessGroupKwargs

from ..errors import DeepGenInputError
from .config import DistributedConfig

logger = logging.getLogger(__name__)


def resolve_deepspeed_config(path: str | Path, micro_batch_size: int, grad_accum: int, grad_clip: float, mixed_precision: str, world_size: int) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fill the batch, accumulation, clipping and precision entries from the config."""
    path = Path(path)
    if not path.is_file():
        raise DeepGenInputError(f"DeepSpeed config {str(path)!r} does not exist; use train/accelerate/zero2.json or set distributed.deepspeed_config: null.")
    config = json.loads(path.read_text())
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = micro_batch_size * grad_accum * world_size
    config["gradient_clipping"] = grad_clip
    config["bf16"] = {"enabled": mixed_precision == "bf16"}
    config.pop("fp16", None)
    if "optimizer" in config or "scheduler" in config:
        raise DeepGenInputError(f"{path}: remove 'optimizer'/'scheduler'; the trainer passes its own AdamW and schedule.")
    return config


def build_accelerator(config: DistributedConfig, micro_batch_size: int, grad_accum: int, grad_clip: float, project_dir: str | Path, log_with: list[str] | None = None,
                      autocast_cache: bool = True) -> Accelerator:
    """An `Accelerator` for the launched world.

    Args:
        config: the distributed section (DeepSpeed JSON or none, precision, backend).
        micro_batch_size, grad_accum, grad_clip: written into the DeepSpeed config.
        project_dir: run folder (TensorBoard logs go below it).
        log_with: trackers, e.g. ["tensorboard"].
        autocast_cache: autocast's weight-cast cache (off for `model.cuda_graphs`, which cannot capture it).
    """
    on_cpu = config.cpu or not torch.cuda.is_available()
    # On a CPU-only host accelerate leaves the backend unset unless told (env note §5): gloo makes it work.
    backend = config.process_group_backend or ("gloo" if on_cpu else "nccl")
    world = _launched_world_size()
    # A backend given to a single, unlaunched process makes accelerate expect a process group: only pass it when launched.
    timeout = timedelta(minutes=config.timeout_minutes)
    handlers = [InitProcessGroupKwargs(backend=backend, timeout=timeout)] if world > 1 else []
    if not autocast_cache:
        handlers.append(AutocastKwargs(cache_enabled=False))
    plugin = None
    if config.deepspeed_config:
        ds = resolve_deepspeed_config(config.deepspeed_config, micro_batch_size, grad_accum, grad_clip, config.mixed_precision, world)
        plugin = DeepSpeedPlugin(hf_ds_config=ds, gradient_accumulation_steps=grad_accum, gradient_clipping=grad_clip)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=grad_accum,
        deepspeed_plugin=plugin,
        kwargs_handlers=handlers,
        cpu=config.cpu and plugin is None,  # with `cpu`, accelerate ignores the DeepSpeed plugin (MULTI_CPU)
        project_dir=str(project_dir),
        log_with=log_with,
    )
    if accelerator.distributed_type == DistributedType.FSDP:
        raise DeepGenInputError("the launcher asked for FSDP (an accelerate config with fsdp_config), which the trainer does not support: its checkpoints, "
                                "exports and rollouts need whole weights on every rank. Launch with train/accelerate/multi_gpu.yaml and shard the "
                                "optimizer and gradients with distributed.deepspeed_config: train/accelerate/zero2.json (see docs/multi-gpu.md).")
    logger.info("accelerate: %s, %d process(es), backend %s, precision %s, collective timeout %g min", accelerator.distributed_type, accelerator.num_processes, backend,
                config.mixed_precision, config.timeout_minutes)
    return accelerator


def _launched_world_size() -> int:
    import os

    # The launcher's WORLD_SIZE is the only source of the world before the process group exists.
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def past_deadline(accelerator: Accelerator, deadline: float, now: float) -> bool:
    """`now >= deadline` on any rank (a max over the ranks, so that every rank stops a time-budgeted run at the same
    step). `now` and `deadline` are `time.monotonic()` readings of the caller."""
    late = torch.tensor(float(now >= deadline), device=accelerator.device)
    return bool(accelerator.reduce(late, "max").item())
