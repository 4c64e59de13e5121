"""Stage 2 (SFT) through the documented launcher, `accelerate launch --config_file train/accelerate/multi_gpu.yaml`,
on 2 CPU processes (gloo): the paper's settings at DeepGen-Tiny size (DeepSpeed ZeRO-2, bf16, micro-batch 4, gradient
accumulation 3) and plain DDP against ZeRO-2 in fp32. `--num_processes 2` overrides the file's 8 GPUs; the tiny
recipe's `distributed.cpu: true` makes each process a gloo CPU rank."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import REPO, free_port, tiny_data, tiny_overrides

from deepgen_core.presets import tiny_components
from deepgen_core.train.metrics import read_metrics

pytestmark = pytest.mark.slow
ZERO2 = "distributed.deepspeed_config=train/accelerate/zero2.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


def accelerate_launch(overrides: list[str], timeout: float = 300) -> str:
    """The README's stage-2 command with 2 processes, through tests/train_entry.py (it only skips DeepSpeed's shm
    JIT build)."""
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(REPO / "train/accelerate/multi_gpu.yaml"),
           "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), str(REPO / "tests" / "train_entry.py"),
           "train", "sft", "--config", str(REPO / "train/recipes/tiny-sft.yaml"), *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    return log


def _losses(out) -> list[float]:
    metrics = read_metrics(out / "metrics.jsonl")
    assert sorted(metrics) == [1, 2, 3]
    return [metrics[s]["loss"] for s in (1, 2, 3)]


def test_stage2_paper_settings_zero2_bf16(data, tmp_path):
    out = tmp_path / "zero2-bf16"
    extra = {"max_steps": 3, "micro_batch_size": 4, "grad_accum": 3, "checkpoint.save_every": 0, "distributed.mixed_precision": "bf16"}
    log = accelerate_launch(tiny_overrides(data, out, **extra) + [ZERO2])
    assert log.count("DistributedType.DEEPSPEED, 2 process(es), backend gloo, precision bf16") == 2
    metrics = read_metrics(out / "metrics.jsonl")
    assert sorted(metrics) == [1, 2, 3] and all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in metrics.values())
    assert (out / "checkpoints" / "step-00000003" / "deepspeed").is_dir()
    exported = load_file(str(out / "export-reference" / "deepgen_checkpoint.safetensors"))
    initial = tiny_components(seed=0).transformer.state_dict()
    assert not torch.equal(exported["transformer.proj_out.weight"].float(), initial["proj_out.weight"])
    lora_b = [v for k, v in exported.items() if ".lora_B." in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at 0: every text-layer LoRA trained


def test_stage2_ddp_matches_zero2_fp32(data, tmp_path):
    """Same data, noise and accumulation (3) under DDP and ZeRO-2 give the same losses: equal to float rounding at
    steps 1-2 (the first warm-up step's learning rate is 1e-8), and at step 3, after a full Adam update whose gradients
    were summed in another order (DDP's all-reduce vs ZeRO's reduce-scatter; measured 1.2e-7 relative)."""
    extra = {"max_steps": 3, "grad_accum": 3, "checkpoint.save_every": 0, "checkpoint.export_at_end": "false"}
    ddp_log = accelerate_launch(tiny_overrides(data, tmp_path / "ddp", **extra))
    accelerate_launch(tiny_overrides(data, tmp_path / "zero2", **extra) + [ZERO2])
    assert ddp_log.count("DistributedType.MULTI_CPU, 2 process(es), backend gloo, precision no") == 2
    ddp, zero = _losses(tmp_path / "ddp"), _losses(tmp_path / "zero2")
    assert ddp[:2] == pytest.approx(zero[:2], rel=1e-5)
    assert ddp[2] == pytest.approx(zero[2], rel=1e-4)
