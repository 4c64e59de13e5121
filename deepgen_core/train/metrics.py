"""Training metrics (trl-style): per-key lists averaged and cleared at each log, progress bar, TensorBoard,
a JSONL record of every optimizer step, and periodic sample images."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

logger = logging.getLogger(__name__)


class MetricsLog:
    """Collects scalars between logs; the main process writes `metrics.jsonl` (one line per optimizer step, full
    float precision, appended across resumes) and forwards averages to the accelerate trackers.

    Args:
        accelerator: for the main-process check and the trackers.
        path: the JSONL file.
    """

    def __init__(self, accelerator: Accelerator, path: str | Path) -> None:
        self.accelerator, self.path = accelerator, Path(path)
        self._values: dict[str, list[float]] = defaultdict(list)

    def add(self, **values: float) -> None:
        for key, value in values.items():
            if value is not None:
                self._values[key].append(float(value))

    def truncate(self, step: int) -> None:
        """Drop the records after `step` (main process): a run resumed from the checkpoint of `step` replays the
        later steps, which must not appear twice. A record that is not valid JSON (a line cut by a crash) goes too."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(self.path)

    def record_step(self, step: int, values: dict[str, Any]) -> None:
        """Append one optimizer step's exact values to the JSONL file (main process)."""
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")

    def flush(self, step: int) -> dict[str, float]:
        """Average, send to the trackers, clear; returns the averages."""
        means = {k: float(np.mean(v)) for k, v in self._values.items() if v}
        self._values.clear()
        if means:
            self.accelerator.log(means, step=step)
        return means


def read_metrics(path: str | Path) -> dict[int, dict[str, Any]]:
    """Step -> record from a `metrics.jsonl`; a later record of a step (after a resume) replaces an earlier one."""
    out: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            out[record["step"]] = record
    return out


@torch.no_grad()
def render_samples(model, prompts: list[str], steps: int, size: int, seed: int, out_dir: Path, step: int, accelerator: Accelerator) -> list[Path]:
    """Generate one image per prompt with the in-training weights (main process), save PNGs, log to TensorBoard."""
    was_training = model.training
    model.eval()
    try:
        out = model.pipeline()(prompts, height=size, width=size, num_inference_steps=steps,
                               generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    finally:
        model.train(was_training)
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    paths = []
    for i, array in enumerate(out.images):
        path = out_dir / f"step-{step:08d}-{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": np.stack(out.images)}, step=step, dataformats="NHWC")
    return paths
