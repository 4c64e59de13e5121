"""Training and RL mistakes: config values checked before anything is built (no folder left behind), rewards that
never arrive stop the run instead of training on no signal, and resumed runs keep one metrics record per step."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from train_helpers import reset_accelerate

from deepgen_core.cli import main
from deepgen_core.errors import DeepGenInputError, TrainingError
from deepgen_core.rewards import RewardOutput
from deepgen_core.train.config import load_config
from deepgen_core.train.metrics import MetricsLog, read_metrics
from deepgen_core.train.rl.config import load_rl_config

REPO = Path(__file__).resolve().parents[1]
TINY_SFT = str(REPO / "train" / "recipes" / "tiny-sft.yaml")


@pytest.mark.parametrize("override,message", [
    ("optim.lr=abc", "config field optim.lr must be a number, got 'abc'.*optim.lr=0.0001"),
    ("optim=5", "config field optim must be a section.*optim.lr=VALUE"),
    ("optim.lr=-1", "optim.lr must be > 0, got -1"),
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("max_steps=1e3", "max_steps must be an integer, got 1000.0"),
    ("micro_batch_size=0", "micro_batch_size must be >= 1.*nearest valid value is 1"),
    ("optim.betas=[0.9]", "optim.betas must be a list of 2 items"),
    ("lora.enabled=maybe", "lora.enabled must be true or false"),
    ("data.sources=[{path: 5}]", r"data.sources\[0\].path must be a string"),
    ("data.sources=[]", "data.sources is empty"),
])
def test_bad_config_values_fail_before_anything_is_built(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    code = main(["train", "sft", "--config", TINY_SFT, override, f"checkpoint.output_dir={out}"])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not out.exists()


def test_print_config_refuses_the_same_values(capsys):
    assert main(["train", "sft", "--config", TINY_SFT, "optim.lr=abc", "--print-config"]) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_a_run_needs_a_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for stage in ("sft", "pretrain", "rl", "vae"):
        assert main(["train", stage]) == 2
        assert "needs --config RECIPE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert main(["train", "sft", "--print-config"]) == 0  # the defaults can still be shown


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("optim:\n  lr: 1e-4\n bad: [\n")
    with pytest.raises(DeepGenInputError, match=rf"recipe '{recipe}' is not valid YAML at line 3"):
        load_config("sft", recipe)
    with pytest.raises(DeepGenInputError, match="override 'rollout.eta=\\[1' is not valid YAML"):
        load_rl_config(None, ["rollout.eta=[1"])


def test_rl_config_is_type_checked(tmp_path):
    with pytest.raises(DeepGenInputError, match="config field rollout.guidance_scale must be a number, got 'high'"):
        load_rl_config(REPO / "train/recipes/rl-tiny.yaml", ["rollout.guidance_scale=high"])
    with pytest.raises(DeepGenInputError, match="config field run must be a section"):
        load_rl_config(REPO / "train/recipes/rl-tiny.yaml", ["run=5"])
    with pytest.raises(DeepGenInputError, match="rollout.num_inference_steps must be >= 1"):
        load_rl_config(REPO / "train/recipes/rl-tiny.yaml", ["rollout.num_inference_steps=0"])


# ------------------------------------------------------------------------------------------------ rewards that fail


class FlakyReward:
    """Scores brightness for every other call and fails (None, counted) for the others; `always_fail` fails always."""

    name = "brightness"

    def __init__(self, always_fail: bool = False) -> None:
        self.calls, self.always_fail = 0, always_fail

    def __call__(self, images, prompts, **metadata) -> RewardOutput:
        self.calls += 1
        if self.always_fail or self.calls % 2 == 0:
            return RewardOutput(scores=[None] * len(images), details=["service failed"] * len(images), failures=len(images))
        scores = [float(torch.tensor(list(i.convert("L").getdata()), dtype=torch.float32).mean() / 255) for i in images]
        return RewardOutput(scores=scores, details=[""] * len(images), failures=0)


def test_reward_metrics_never_report_a_missing_reward_as_zero():
    from deepgen_core.train.rl.reporting import reward_metrics
    from deepgen_core.train.rl.rollout import ScoredRollout

    rewards = torch.tensor([[0.8], [float("nan")], [0.6], [float("nan")]])
    scored = ScoredRollout.__new__(ScoredRollout)
    scored.rewards, scored.weights, scored.all_rewards, scored.all_weights = rewards, torch.ones(4, 1), None, None
    scored.reward_names, scored.outputs, scored.advantages = ["brightness"], {"brightness": RewardOutput([0.8, None, 0.6, None], [""] * 4, 2)}, torch.zeros(4)
    metrics = reward_metrics(scored)
    assert metrics["reward"] == pytest.approx(0.7) and metrics["reward/brightness"] == pytest.approx(0.7)
    assert metrics["reward_scored"] == 0.5
    scored.rewards = torch.full((4, 1), float("nan"))
    metrics = reward_metrics(scored)
    assert math.isnan(metrics["reward"]) and metrics["reward_scored"] == 0.0


@pytest.fixture()
def rl_config(tmp_path):
    from test_rl_trainer import tiny_config

    def make(**run):
        return tiny_config(tmp_path, run={"max_steps": 6, **run}, rollout={"num_inference_steps": 2, "height": 16, "width": 16, "prompts_per_step": 1})
    return make


def test_rl_run_without_reward_signal_stops_with_a_clear_error(rl_config, tmp_path):
    from test_rl_trainer import tiny_rl_components

    from deepgen_core.train.rl.trainer import RLTrainer

    reset_accelerate()
    config = rl_config(max_failed_steps=2)
    with pytest.raises(TrainingError, match="no reward was scored in 2 consecutive steps.*run.max_failed_steps"):
        RLTrainer(config, rewards={"brightness": FlakyReward(always_fail=True)}, components=tiny_rl_components()).run()
    assert not (tmp_path / "run" / "export").exists()  # nothing exported from a run that learnt nothing
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 1 and math.isnan(rows[1]["reward"]) and rows[1]["reward_scored"] == 0.0


def test_rl_run_with_half_the_rewards_missing_reports_the_scored_share(rl_config, tmp_path):
    from test_rl_trainer import tiny_rl_components

    from deepgen_core.train.rl.trainer import RLTrainer

    reset_accelerate()
    history = RLTrainer(rl_config(max_steps=4, max_failed_steps=2), rewards={"brightness": FlakyReward()}, components=tiny_rl_components()).run().history
    assert [h["reward_scored"] for h in history] == [1.0, 0.0, 1.0, 0.0]
    assert all(h["reward"] > 0 for h in history[::2]) and all(math.isnan(h["reward"]) for h in history[1::2])


# ------------------------------------------------------------------------------------------------ metrics on resume


def test_metrics_are_truncated_to_the_resumed_step(tmp_path):
    class MainProcess:
        is_main_process = True

    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(MainProcess(), path)
    for step in range(1, 8):
        log.record_step(step, {"loss": float(step)})
    with open(path, "a") as f:
        f.write('{"step": 8, "lo')  # a line cut by a crash
    log.truncate(5)
    for step in range(6, 9):  # the resumed run replays 6, 7, 8
        log.record_step(step, {"loss": 10.0 * step})
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert read_metrics(path)[6]["loss"] == 60.0
