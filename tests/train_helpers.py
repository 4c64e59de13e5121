"""Shared helpers of the training tests: tiny configs over the synthetic dataset, launching runs, fixed-batch loss."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from accelerate.state import AcceleratorState

from deepgen_core.train.config import build_config, parse_overrides
from deepgen_core.train.data import SourceDataset
from deepgen_core.train.modeling import DeepGenTrainModel, draw_step_noise
from deepgen_core.train.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).resolve().parent / "train_entry.py"


def tiny_data(folder: Path) -> dict[str, Path]:
    return write_synthetic_dataset(folder, n=4, size=64)


def tiny_overrides(data: dict[str, Path], out: Path, **extra: object) -> list[str]:
    """`key=value` overrides for the tiny recipes: text-to-image + edit sources, fp32 on the CPU."""
    sources = f"[{{path: '{data['blip3o']}', format: blip3o}}, {{path: '{data['edit']}', format: edit}}]"
    items = {"data.sources": sources, "checkpoint.output_dir": f"'{out}'", "logging.progress_bar": "false", **extra}
    return [f"{k}={v}" for k, v in items.items()]


def tiny_config(stage: str, data: dict[str, Path], out: Path, **extra: object):
    import yaml

    recipe = yaml.safe_load((REPO / "train" / "recipes" / f"tiny-{stage}.yaml").read_text())
    overrides = parse_overrides(tiny_overrides(data, out, **extra))
    recipe.update({k: ({**recipe.get(k, {}), **v} if isinstance(v, dict) else v) for k, v in overrides.items()})
    return build_config(stage, recipe)


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons; in-process tests build several Accelerators."""
    AcceleratorState._reset_state(reset_partial_state=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(stage: str, overrides: list[str], nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `deepgen train <stage>` on `nproc` CPU processes (torchrun, gloo) in its own process group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           str(ENTRY), "train", stage, "--config", str(REPO / "train" / "recipes" / f"tiny-{stage}.yaml"), *overrides]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run(stage: str, overrides: list[str], nproc: int = 2, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = launch(stage, overrides, nproc, env)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"training run failed:\n{out[-6000:]}"
    return out


def fixed_batch(config) -> dict:
    source = SourceDataset(config.data.sources[0], config.data)
    samples = [source[i] for i in range(2)]
    return {"pixel_values": [s["pixel_values"] for s in samples], "texts": [s["text"] for s in samples]}


@torch.no_grad()
def fixed_batch_loss(model: DeepGenTrainModel, batch: dict, draws: int = 4) -> float:
    """Loss of a fixed batch averaged over `draws` fixed noise draws (eval mode: no LoRA dropout)."""
    model.eval()
    losses = [model(batch, draw_step_noise(model, batch, torch.Generator().manual_seed(1000 + d)))["loss"] for d in range(draws)]
    return float(torch.stack(losses).mean())
