"""The MR-GRPO trainer on the tiny model (CPU): learning, resume, stepping semantics, preview parity, SFT aux."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from train_helpers import reset_accelerate

from deepgen_core.cli import main
from deepgen_core.errors import DeepGenInputError
from deepgen_core.presets import tiny_components
from deepgen_core.rewards import BrightnessReward
from deepgen_core.train.rl.config import RLConfig, load_rl_config
from deepgen_core.train.rl.preview import rollout_preview
from deepgen_core.train.rl.trainer import RLTrainer
from deepgen_core.train.trainer import derived_seed

RECIPES = Path(__file__).resolve().parents[1] / "train" / "recipes"
PROMPTS = ["a red cube on a table", "a cat under a blue umbrella", "a lighthouse at night"]


class LinearPreviewDecoder(nn.Module):
    """A 1x1-conv 'latent preview' decoder (16 -> RGB, nearest x8). The tiny random VAE's GroupNorm decoder maps
    every latent to almost the same brightness (+-0.01), so no reward on brightness could rise through it; with
    this decoder brightness is a linear function of the final latents, which the policy can learn to move."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(16, 3, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(3, 16, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.15)
            self.proj.bias.zero_()

    def forward(self, z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return nn.functional.interpolate(self.proj(z), scale_factor=8, mode="nearest")


def tiny_rl_components():
    components = tiny_components(0)
    components.vae.decoder = LinearPreviewDecoder()
    return components


def tiny_config(tmp_path, **sections) -> RLConfig:
    base = {
        "model": {"source": "tiny", "gradient_checkpointing": False},
        "rollout": {"group_size": 4, "prompts_per_step": 2, "num_inference_steps": 4, "height": 32, "width": 32, "sampler": "flowgrpo_sde"},
        "policy": {"timestep_fraction": 1.0, "include_last_step": True, "micro_batch_size": 8, "kl_beta": 1e-4, "clip_range": 0.2, "sft_coef": 0.0},
        "rewards": {"prompts": PROMPTS, "weights": {"brightness": 1.0}},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "distributed": {"mixed_precision": "no", "cpu": True},
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 4, "seed": 0, "save_every": 0, "save_images_every": 0, "tensorboard": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return RLConfig(**base)


@pytest.mark.slow
def test_mean_reward_rises_while_kl_stays_bounded(tmp_path):
    """Behavioural check (acceptance 2) with the reference's sampler (cps_sde, eta 1, last step excluded) and its
    simplified log-prob: brightness reward, 30 steps of 2 prompts x 4 images (32 px, 4 denoising steps)."""
    config = tiny_config(tmp_path, rollout={"sampler": "cps_sde"}, policy={"timestep_fraction": 0.75, "include_last_step": False, "kl_beta": 1e-5},
                         optim={"lr": 3e-3}, run={"max_steps": 30})
    history = RLTrainer(config, components=tiny_rl_components()).run().history
    rewards = [h["reward"] for h in history]
    kls = [h["kl"] for h in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, f"mean reward did not rise clearly: first 5 steps {first:.3f}, last 5 {last:.3f}"
    assert kls[0] == 0.0  # the first update starts from the reference weights
    # v-space KL is (v - v_ref)^2 / (2 sigma'^2): large numbers at small sigma', but it must not run away.
    assert all(math.isfinite(k) and k < 500 for k in kls), f"KL not bounded: {kls}"
    assert max(kls[-10:]) < 3 * max(kls[:10]), f"KL drifts away from the reference: {kls}"


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    full = RLTrainer(tiny_config(tmp_path / "a", run={"max_steps": 4, "save_every": 2, "save_images_every": 2})).run()
    RLTrainer(tiny_config(tmp_path / "b", run={"max_steps": 2, "save_every": 2})).run()
    resumed = RLTrainer(tiny_config(tmp_path / "b", run={"max_steps": 4, "save_every": 2})).run()
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in full.history[2:]]
    assert [h["loss/policy"] for h in resumed.history] == [h["loss/policy"] for h in full.history[2:]]
    lines = (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    for key in ("reward", "reward/brightness", "kl", "clip_frac", "loss/policy", "advantage/std", "time/rollout", "time/reward", "time/update", "grad_norm"):
        assert key in record, key
    assert (tmp_path / "a" / "run" / "checkpoints" / "step-00000004" / "checkpoint.json").is_file()
    assert (tmp_path / "a" / "run" / "export").is_dir()
    grid = json.loads((tmp_path / "a" / "run" / "samples" / "step-00000004" / "rank0.json").read_text())
    assert len(grid["images"]) == 4 and {"advantage", "scores", "details"} <= set(grid["images"][0])
    assert (tmp_path / "a" / "run" / "samples" / "step-00000004" / "rank0.png").is_file()


def test_max_minutes_ends_like_a_finished_run_and_the_rerun_resumes(tmp_path, monkeypatch):
    """`run.max_minutes`: past the budget the run checkpoints and exports at that step; a re-run goes on to
    max_steps exactly as the uninterrupted run did."""
    from types import SimpleNamespace

    import deepgen_core.train.rl.trainer as rl_trainer

    full = RLTrainer(tiny_config(tmp_path / "full", run={"max_steps": 4})).run()
    now = [0.0]
    step = RLTrainer.train_step

    def timed_step(self, *args):
        values = step(self, *args)
        now[0] += 60.0  # a minute per RL step
        return values

    monkeypatch.setattr(RLTrainer, "train_step", timed_step)
    monkeypatch.setattr(rl_trainer, "time", SimpleNamespace(monotonic=lambda: now[0], perf_counter=rl_trainer.time.perf_counter))
    cut = RLTrainer(tiny_config(tmp_path / "cut", run={"max_steps": 4, "max_minutes": 1.5})).run()
    monkeypatch.undo()
    out = tmp_path / "cut" / "run"
    assert cut.step == 2 and [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert (out / "export" / "deepgen-transformer.safetensors").is_file()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    resumed = RLTrainer(tiny_config(tmp_path / "cut", run={"max_steps": 4, "max_minutes": 600})).run()
    assert resumed.step == 4
    assert [h["reward"] for h in cut.history + resumed.history] == [h["reward"] for h in full.history]
    assert [h["loss/policy"] for h in resumed.history] == [h["loss/policy"] for h in full.history[2:]]
    with pytest.raises(DeepGenInputError, match="max_minutes must be >= 0"):
        tiny_config(tmp_path, run={"max_minutes": -1})


def test_only_the_dit_trains_and_the_reference_stays(tmp_path):
    trainer = RLTrainer(tiny_config(tmp_path, run={"max_steps": 2}))
    policy, ref = trainer.build_model()
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    trainer.build_model = lambda: (policy, ref)
    trainer.run()
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("inner.transformer.") for n in changed)
    assert all(torch.equal(p, ref_before[n]) for n, p in ref.named_parameters())


@pytest.mark.parametrize(("reference_stepping", "sft", "updates"), [(False, False, 1), (True, False, 4), (False, True, 1), (True, True, 5)])
def test_optimizer_updates_per_step(tmp_path, reference_stepping, sft, updates):
    # 4 trained timesteps x 1 micro-batch (+ the SFT backward): one update per batch, or one per backward (§6.9).
    sections = {"policy": {"reference_stepping": reference_stepping, "sft_coef": 0.1 if sft else 0.0, "sft_micro_batch_size": 2}}
    if sft:
        from deepgen_core.train.synthetic import write_synthetic_dataset

        paths = write_synthetic_dataset(tmp_path / "data", size=32)
        sections["sft"] = {"sources": [{"path": str(paths["blip3o"]), "format": "blip3o"}], "image_size": 32, "min_side": 8, "num_workers": 0}
    history = RLTrainer(tiny_config(tmp_path, run={"max_steps": 1}, **sections)).run().history
    assert history[0]["optimizer_updates"] == updates
    assert ("loss/sft" in history[0]) == sft


def test_preview_equals_the_trainer(tmp_path):
    """Acceptance 4: the preview's scores and advantages equal the trainer's for the same seed and prompts."""
    config = tiny_config(tmp_path, policy={"advantage_scope": "per_rank"})
    trainer = RLTrainer(config, rewards={"brightness": BrightnessReward()})
    policy, _ = trainer.build_model()
    scored = trainer.collect(3, policy)
    prompts = scored.rollout.prompts[:: config.rollout.group_size]
    preview = rollout_preview(policy.inner.pipeline(), prompts, group_size=4, seed=derived_seed(config.run.seed, 3, 0, 1), sampler="flowgrpo_sde",
                              eta=1.0, steps=4, height=32, width=32, rewards={"brightness": BrightnessReward()}, weights={"brightness": 1.0})
    assert preview.scores["brightness"] == scored.outputs["brightness"].scores
    assert preview.advantages == scored.advantages.tolist()
    assert preview.prompts == scored.rollout.prompts


@pytest.mark.parametrize("recipe", ["rl.yaml", "rl-tiny.yaml"])
def test_shipped_rl_recipes_validate(recipe):
    config = load_rl_config(RECIPES / recipe)
    assert config.rollout.group_size >= 2 and config.optim.min_lr_ratio == 1.0


def test_config_validation_and_cli(tmp_path, capsys):
    with pytest.raises(DeepGenInputError, match="group_size"):
        tiny_config(tmp_path, rollout={"group_size": 1})
    with pytest.raises(DeepGenInputError, match="sft.sources"):
        tiny_config(tmp_path, policy={"sft_coef": 0.1})
    with pytest.raises(DeepGenInputError, match="unknown config keys"):
        tiny_config(tmp_path, policy={"kl": 1.0})
    config = load_rl_config(RECIPES / "rl-tiny.yaml", ["optim.lr=5e-4", "policy.reference_stepping=true"])
    assert config.optim.lr == 5e-4 and config.policy.reference_stepping and config.optim.min_lr_ratio == 1.0
    assert main(["train", "rl", "--config", str(RECIPES / "rl-tiny.yaml"), "--print-config", "run.max_steps=7"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["max_steps"] == 7


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_rl(out, *overrides: str) -> list[dict]:
    """`deepgen train rl` on 2 CPU processes (torchrun, gloo) with the tiny recipe; returns the metrics records."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(repo / "tests" / "rl_entry.py"), "train", "rl", "--config", str(repo / "train/recipes/rl-tiny.yaml"),
           f"run.output_dir={out}", "run.save_every=0", *overrides]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_ddp_and_zero2_agree_with_global_advantages(tmp_path):
    """Two CPU processes, DDP vs DeepSpeed ZeRO-2 (our explicit accumulation boundaries), fp32, 2 steps.

    Advantages: GDPO groups are zero-mean; with the default 'global' scope the batch std is taken over both ranks'
    16 images, so rank 0's own 8 advantages do not have std 1. Agreement: Adam's first steps move every weight by
    about +-lr whatever the gradient's size, so gradients that differ only in summation order (DeepSpeed's
    bucketed reduce-scatter) can flip a few tiny updates: step-2 values agree to ~1%, not bitwise."""
    ddp = _launch_rl(tmp_path / "ddp", "run.max_steps=2")
    zero = _launch_rl(tmp_path / "zero", "run.max_steps=2", "distributed.deepspeed_config=train/accelerate/zero2.json")
    assert abs(ddp[0]["advantage/mean"]) < 1e-5 and abs(ddp[0]["advantage/std"] - 1) > 1e-3
    for a, b in zip(ddp, zero):
        assert a["optimizer_updates"] == b["optimizer_updates"] == 1
        for key in ("reward", "kl", "loss/policy", "advantage/std"):
            assert b[key] == pytest.approx(a[key], rel=2e-2, abs=1e-6), key


@pytest.mark.slow
def test_zero2_reference_stepping_with_per_rank_advantages(tmp_path):
    """The reference's semantics under ZeRO-2: an optimizer update after each of the 3 backwards, and advantages
    normalised per rank (§9.12-9.13): rank 0's 8 advantages have std s / (s + 1e-4) ~ 1."""
    records = _launch_rl(tmp_path / "ref", "run.max_steps=1", "policy.reference_stepping=true", "policy.advantage_scope=per_rank",
                         "distributed.deepspeed_config=train/accelerate/zero2.json")
    assert records[0]["optimizer_updates"] == 3
    assert abs(records[0]["advantage/std"] - 1) < 1e-3


@pytest.mark.parametrize("reference_dtype", ["float32", "bfloat16"])
def test_kl_starts_at_zero_with_a_full_precision_reference_under_bf16(tmp_path, reference_dtype):
    """Under bf16 autocast an fp32 reference computes exactly as the fp32-master policy: the first step's KL (before
    any update) is 0. A bf16 reference starts at the rounding difference, which v-space KL's 1/std^2 magnifies."""
    config = tiny_config(tmp_path, distributed={"mixed_precision": "bf16"}, policy={"reference_dtype": reference_dtype},
                         run={"max_steps": 1})
    reset_accelerate()  # accelerate's process-wide state holds the other tests' mixed_precision 'no'
    try:
        trainer = RLTrainer(config, rewards={"brightness": BrightnessReward()}, components=tiny_rl_components())
        _, ref = trainer.build_model()
        assert {p.dtype for p in ref.parameters()} == {getattr(torch, reference_dtype)}
        kl = trainer.run().history[0]["kl"]
    finally:
        reset_accelerate()
    assert (kl == 0.0) if reference_dtype == "float32" else (kl > 0.0), kl
    with pytest.raises(DeepGenInputError, match="reference_dtype must be 'float32' or 'bfloat16'"):
        tiny_config(tmp_path, policy={"reference_dtype": "fp16"})
    with pytest.raises(DeepGenInputError, match="'bfloat16' needs distributed.mixed_precision: bf16"):
        tiny_config(tmp_path, policy={"reference_dtype": "bfloat16"})


class PromptKeyedReward:
    """Scores by prompt, not by image: 1.0 for prompts containing 'cube', 0.25 otherwise, None for 'night'
    (unscored). Records the size and count of every image it scores."""

    name = "keyed"

    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[int, int]]] = []

    def __call__(self, images, prompts, **metadata):
        from deepgen_core.rewards.base import RewardOutput

        self.calls.append((len(images), images[0].size))
        return RewardOutput([1.0 if "cube" in p else None if "night" in p else 0.25 for p in prompts])


def test_curriculum_draws_the_prompts_the_start_model_gets_wrong_more_often(tmp_path, monkeypatch):
    """`curriculum.hard_weight`: every distinct prompt is scored once before step 1 (rollout size, images_per_prompt);
    prompts under the threshold are drawn hard_weight times as often; unscored prompts are never hard; the scores
    are kept, so a resumed run does not render them again and draws the same prompts."""
    from deepgen_core.train.rl import curriculum
    from deepgen_core.train.rl.prompts import PromptSampler

    prompts = [*PROMPTS, PROMPTS[0]]  # a repeated prompt is scored once
    sections = {"rewards": {"prompts": prompts, "weights": {"keyed": 1.0}}, "run": {"max_steps": 1, "save_every": 1},
                "curriculum": {"hard_weight": 9.0, "images_per_prompt": 2, "batch_size": 2}}
    reward = PromptKeyedReward()
    trainer = RLTrainer(tiny_config(tmp_path, **sections), rewards={"keyed": reward})
    trainer.run()
    assert reward.calls[:2] == [(4, (32, 32)), (2, (32, 32))]  # 3 distinct prompts x 2 images, 2 prompts a call
    stored = json.loads((tmp_path / "run" / curriculum.FILE_NAME).read_text())["scores"]
    assert [(s["prompt"], s["score"]) for s in stored[:2]] == [(PROMPTS[0], 1.0), (PROMPTS[1], 0.25)]
    assert math.isnan(stored[2]["score"])
    # entries: cube, cat, night, cube -> weights 1, 9, 1, 1: the hard 'cat' prompt is drawn 9 / 12 of the time
    assert trainer.prompts.weights.tolist() == [1.0, 9.0, 1.0, 1.0]
    draws = trainer.prompts.draw(4000, torch.Generator().manual_seed(0))
    assert sum(d.prompt == PROMPTS[1] for d in draws) / 4000 == pytest.approx(0.75, abs=0.03)
    # a resumed run reads the stored scores and renders nothing
    monkeypatch.setattr(curriculum, "score_prompts", lambda *a, **k: pytest.fail("the stored curriculum was scored again"))
    resumed = RLTrainer(tiny_config(tmp_path, **{**sections, "run": {"max_steps": 2, "save_every": 1}}), rewards={"keyed": reward})
    assert resumed.run().step == 2 and resumed.prompts.weights.tolist() == [1.0, 9.0, 1.0, 1.0]
    # other settings score again; the threshold is a fraction of the total reward weight
    assert curriculum.load_scores(tmp_path / "run" / curriculum.FILE_NAME, {"other": 1}, curriculum.distinct_prompts(trainer.prompts)) is None
    scores = [curriculum.PromptScore("inline", p, s) for p, s in zip(PROMPTS, (1.0, 0.25, float("nan")))]
    sampler, summary, share = curriculum.reweighted(PromptSampler.from_rewards_config(None, prompts, {"keyed": 1.0}), scores, 0.2, 9.0)
    assert sampler.weights.tolist() == [1.0] * 4 and summary == {"inline": {"prompts": 3, "hard": 0}} and share == 0.0
    assert curriculum.reweighted(sampler, scores, 0.5, 9.0)[2] == pytest.approx(0.75)
    for bad, match in (({"hard_weight": 0.0}, "hard_weight must be > 0"), ({"threshold": 1.5}, r"threshold must be in \(0, 1\]"),
                       ({"images_per_prompt": 0}, "images_per_prompt and curriculum.batch_size must be >= 1")):
        with pytest.raises(DeepGenInputError, match=match):
            tiny_config(tmp_path, curriculum=bad)
