"""Atomic, resumable training checkpoints shared by every stage (model, optimizer, scheduler, data position, RNG).

Layout: `<root>/step-00001000/` holding `trainable.safetensors` + `optimizer.pt` (one process / DDP) or a
DeepSpeed folder `deepspeed/` (ZeRO partitions, frozen weights excluded), `scheduler.pt`, `rng-rank<r>.*` and
`checkpoint.json` (trainer state). Every rank writes into `.tmp-step-...`; after a barrier the main process
writes `checkpoint.json` last, fsyncs and renames the folder into place. A folder without `checkpoint.json`, or
a `.tmp-*` folder, is never picked for resuming, so a kill during a save leaves the previous checkpoint as the
newest valid one. Multi-node runs need `root` on a filesystem shared by all nodes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..formats.files import honour_umask
from .accel import is_deepspeed

logger = logging.getLogger(__name__)

STATE_FILE = "checkpoint.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require gradients (detached, contiguous, on the CPU)."""
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy `state` into the trainable parameters of `module`; the key sets must match exactly."""
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{what} does not fit the trainable parameters: missing {missing[:5]}, unexpected {unexpected[:5]} "
                              "(was it written by another stage or LoRA setting?).")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_rng(folder: Path, rank: int) -> None:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, str(folder / f"rng-rank{rank}.safetensors"))
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"python": [py_state[0], list(py_state[1]), py_state[2]],
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    (folder / f"rng-rank{rank}.json").write_text(json.dumps(state))


def _load_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng-rank{rank}.safetensors"
    if not path.is_file():
        logger.warning("checkpoint %s has no RNG state for rank %d (different world size?); RNG not restored", folder, rank)
        return
    tensors = load_file(str(path))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    state = json.loads((folder / f"rng-rank{rank}.json").read_text())
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete `step-*` checkpoint folders under `root` (those with their `checkpoint.json`), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_RE.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name)[1]))


class CheckpointManager:
    """Writes, finds, loads and prunes checkpoints of one run.

    Args:
        root: folder holding the `step-*` checkpoints.
        accelerator: the run's accelerator (ranks, barriers, DeepSpeed detection, unwrapping).
        keep_last: newest complete checkpoints to keep (older ones are deleted after each save; 0 keeps all).
    """

    def __init__(self, root: str | Path, accelerator: Accelerator, keep_last: int = 5) -> None:
        self.root, self.accelerator, self.keep_last = Path(root), accelerator, keep_last

    # ------------------------------------------------------------------------------------------- finding

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return complete_checkpoints(self.root)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def remove_partial(self) -> None:
        """Delete `.tmp-*` folders left by a save that was interrupted (main process only)."""
        if self.accelerator.is_main_process and self.root.is_dir():
            for p in self.root.glob(".tmp-step-*"):
                logger.warning("removing the interrupted checkpoint %s", p)
                shutil.rmtree(p, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------- saving

    def save(self, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: dict[str, Any],
             extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
        """Collective: every process must call it. `state` is JSON-serialisable trainer state (step, data
        position, metrics...); `extra` maps a name to more tensors the trainer keeps (written by the main process as
        `<name>.safetensors`, read back with `load_extra`). Returns the final checkpoint folder."""
        acc = self.accelerator
        name = f"step-{step:08d}"
        tmp, final = self.root / f".tmp-{name}", self.root / name
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        self._write_payload(tmp, model, optimizer, scheduler)
        if acc.is_main_process:
            for name, tensors in (extra or {}).items():
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
        _save_rng(tmp, acc.process_index)
        acc.wait_for_everyone()
        if acc.is_main_process:
            honour_umask(tmp)  # safetensors writes 0600 whatever the umask
            self._finalize(tmp, final, {**state, "step": step, "world_size": acc.num_processes})
            self._prune()
        acc.wait_for_everyone()
        return final

    def _write_payload(self, folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
        acc = self.accelerator
        if is_deepspeed(acc):
            # ZeRO partitions live on every rank; DeepSpeed writes its own files. Frozen weights are excluded.
            model.save_checkpoint(str(folder / "deepspeed"), tag="state", exclude_frozen_parameters=True, save_latest=False)
        elif acc.is_main_process:
            save_file(trainable_state_dict(acc.unwrap_model(model)), str(folder / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        if acc.is_main_process:
            torch.save(scheduler.state_dict(), folder / "scheduler.pt")

    def _finalize(self, tmp: Path, final: Path, state: dict[str, Any]) -> None:
        marker = tmp / STATE_FILE
        with open(marker, "w") as f:
            f.write(json.dumps(state, indent=1, default=str))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # saving a step again after a resume: move the old one aside first
            old = final.with_name(f".tmp-old-{final.name}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.root)
        logger.info("saved checkpoint %s", final)

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for old in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------------------------------- loading

    @staticmethod
    def load_extra(folder: str | Path, name: str) -> dict[str, torch.Tensor]:
        """The tensors a `save(..., extra={name: ...})` wrote into `folder`."""
        path = Path(folder) / f"{name}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{folder} has no {path.name}: it was written by a run with other settings; resume with those, or start a new output_dir.")
        return load_file(str(path))

    def load(self, folder: str | Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """Restore model, optimizer, scheduler and this rank's RNG from `folder`; returns the trainer state."""
        folder = Path(folder)
        if not (folder / STATE_FILE).is_file():
            raise CheckpointError(f"{folder} is not a complete training checkpoint (no {STATE_FILE}); pick a step-* folder.")
        state = json.loads((folder / STATE_FILE).read_text())
        acc = self.accelerator
        if is_deepspeed(acc):
            if not (folder / "deepspeed").is_dir():
                raise CheckpointError(f"{folder} was not written by a DeepSpeed run; resume it with the same distributed setup.")
            # Frozen weights are not in the files (excluded on save), hence non-strict; trainable ones are checked by
            # DeepSpeed through the optimizer partitions, which restore the fp32 master weights.
            model.load_checkpoint(str(folder / "deepspeed"), tag="state", load_module_strict=False, load_lr_scheduler_states=False)
        else:
            if not (folder / "trainable.safetensors").is_file():
                raise CheckpointError(f"{folder} was written by a DeepSpeed run; resume it with the same DeepSpeed config.")
            load_trainable_state_dict(acc.unwrap_model(model), load_file(str(folder / "trainable.safetensors")), f"checkpoint {folder}")
            optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        _load_rng(folder, acc.process_index)
        logger.info("resumed from %s (step %d)", folder, state["step"])
        return state
