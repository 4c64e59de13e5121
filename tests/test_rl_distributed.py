"""MR-GRPO on 2 CPU processes (torchrun, gloo) at the paper's group size 8, with the rewards served by the JSON reward
server on loopback and the auxiliary SFT stream: advantages are global, and a killed rank stops the run (non-zero exit,
a note naming the checkpoint to resume from) and the run resumes from that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from train_helpers import free_port

from deepgen_core.rewards import BrightnessReward
from deepgen_core.rewards.service import RewardServer
from deepgen_core.train.metrics import read_metrics
from deepgen_core.train.rl.advantages import compute_advantages
from deepgen_core.train.rl.config import load_rl_config
from deepgen_core.train.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "train" / "recipes" / "rl-tiny.yaml"
STEPS = 3


@pytest.fixture(scope="module")
def reward_url():
    server = RewardServer({"brightness": BrightnessReward()}, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def overrides(reward_url, tmp_path_factory) -> list[str]:
    """Group 8, one prompt per rank (16 images a step), rewards over HTTP, the SFT auxiliary loss, a checkpoint and
    the rollout record (samples/step-N/rank<r>.json) every step."""
    data = write_synthetic_dataset(tmp_path_factory.mktemp("sft"), n=4, size=32)
    return ["rollout.group_size=8", "rollout.prompts_per_step=1", "policy.micro_batch_size=8", f"run.max_steps={STEPS}",
            f"rewards.options={{brightness: {{url: '{reward_url}'}}}}", "policy.sft_coef=0.1", "policy.sft_micro_batch_size=2",
            f"sft.sources=[{{path: '{data['blip3o']}', format: blip3o}}]", "sft.image_size=32", "sft.min_side=8", "sft.num_workers=0",
            "run.save_every=1", "run.keep_last=5", "run.save_images_every=1"]


def _command(out: Path, overrides: list[str], *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, str(REPO / "tests" / "rl_entry.py"), "train", "rl", "--config", str(RECIPE),
            f"run.output_dir={out}", *overrides]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _run(out: Path, overrides: list[str]) -> None:
    cmd = _command(out, overrides, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}")
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(overrides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl") / "run"
    _run(out, overrides)
    return out


def _rollout_record(out: Path, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = json.loads((out / "samples" / f"step-{step:08d}" / f"rank{rank}.json").read_text())["images"]
    return torch.tensor([[i["scores"]["brightness"]] for i in images]), torch.tensor([i["advantage"] for i in images])


def test_advantages_are_global(uninterrupted):
    """Each rank's 8 advantages are its rows of the advantages that one process computes over both ranks' groups."""
    policy = load_rl_config(RECIPE).policy
    for step in range(1, STEPS + 1):
        (r0, a0), (r1, a1) = (_rollout_record(uninterrupted, step, rank) for rank in (0, 1))
        rewards = torch.cat([r0, r1])
        one_process = compute_advantages(rewards, torch.ones_like(rewards), 8, policy.advantage_mode, policy.advantage_clip)
        torch.testing.assert_close(torch.cat([a0, a1]), one_process)
        per_rank = compute_advantages(r0, torch.ones_like(r0), 8, policy.advantage_mode, policy.advantage_clip)
        assert not torch.allclose(a0, per_rank, atol=1e-4), "rank 0's advantages were normalised over its own images only"
    metrics = read_metrics(uninterrupted / "metrics.jsonl")
    assert sorted(metrics) == list(range(1, STEPS + 1)) and all("loss/sft" in m and m["reward_failures/brightness"] == 0 for m in metrics.values())


def test_killed_rank_stops_the_run_which_resumes(overrides, uninterrupted, tmp_path):
    """Two launchers, one per 'node' (the case where no single launcher can stop the survivors): rank 1 is killed after
    the step-2 checkpoint; rank 0 fails at its next collective, exits non-zero with a note naming that checkpoint, and
    the same command (here on one launcher) resumes from it and repeats the uninterrupted run's last step bit for bit."""
    out, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    port = free_port()
    env = _env(DEEPGEN_TEST_PID_DIR=str(pids), DEEPGEN_TEST_STEP_SLEEP="1")
    nodes = [subprocess.Popen(_command(out, overrides, "--nnodes=2", f"--node_rank={n}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                                       f"--master_port={port}"), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for n in (0, 1)]
    try:
        checkpoint = out / "checkpoints" / "step-00000002"
        deadline = time.monotonic() + 240
        while not checkpoint.is_dir() and all(p.poll() is None for p in nodes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.is_dir(), "the run never saved step 2"
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGKILL)
        killed_at = time.monotonic()
        logs = [p.communicate(timeout=120)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert time.monotonic() - killed_at < 120
    assert [p.returncode for p in nodes] == [1, 1], logs[0][-3000:]
    assert "rank 0 of 2 stopped at step 3" in logs[0] and f"the newest complete checkpoint is {checkpoint}" in logs[0], logs[0][-3000:]
    _run(out, overrides)  # the same command: resume: auto picks step 2
    resumed, reference = read_metrics(out / "metrics.jsonl"), read_metrics(uninterrupted / "metrics.jsonl")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for key in ("reward", "loss/policy", "loss/sft", "kl", "advantage/std"):
        assert resumed[STEPS][key] == reference[STEPS][key], (key, resumed[STEPS][key], reference[STEPS][key])


def test_one_launcher_stops_the_other_rank(overrides, tmp_path):
    """On one node the launcher itself ends the run when a rank dies: it stops rank 0 and exits non-zero, naming the
    killed rank's signal."""
    out, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    cmd = _command(out, overrides, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(DEEPGEN_TEST_PID_DIR=str(pids), DEEPGEN_TEST_STEP_SLEEP="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "step-00000001").is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before step 1's checkpoint"
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGKILL)
        log = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "Signal 9 (SIGKILL) received by PID" in log, log[-3000:]
    assert not (out / "export").exists(), "the run finished despite the killed rank"
