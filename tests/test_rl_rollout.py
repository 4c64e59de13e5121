"""RL rollouts on the tiny model and the rollout preview (the ComfyUI node's core)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from deepgen_core.errors import DeepGenInputError
from deepgen_core.rewards import BrightnessReward, ColorReward
from deepgen_core.sampling import sde_step
from deepgen_core.train.rl.advantages import compute_advantages
from deepgen_core.train.rl.preview import rollout_preview
from deepgen_core.train.rl.rollout import RolloutSettings, dit_velocity, rollout

SMALL = {"num_inference_steps": 4, "height": 32, "width": 32}


def test_rollout_records_a_consistent_trajectory(tiny_pipe):
    settings = RolloutSettings(**SMALL)
    ro = rollout(tiny_pipe, ["a red cube", "a blue cat"], 3, settings, torch.Generator().manual_seed(0))
    assert ro.latents.shape == (5, 6, 16, 4, 4) and ro.log_probs.shape == (4, 6) and len(ro.images) == 6
    assert ro.prompts == ["a red cube"] * 3 + ["a blue cat"] * 3
    # Same initial noise within a group, different across groups; the SDE noise makes the images differ.
    assert torch.equal(ro.latents[0, 0], ro.latents[0, 2]) and not torch.equal(ro.latents[0, 0], ro.latents[0, 3])
    assert not torch.equal(ro.latents[-1, 0], ro.latents[-1, 1])
    # Re-scoring a stored step with the same policy reproduces the recorded log-prob exactly (ratio = 1).
    i = 1
    with torch.no_grad():
        v = dit_velocity(tiny_pipe.transformer, ro.latents[i], ro.timesteps[i], ro.embeddings, 0.0)
    again = sde_step("cps_sde", v, ro.latents[i], ro.sigmas[i], ro.sigmas[i + 1], eta=1.0, prev_latents=ro.latents[i + 1])
    assert_close(again.log_prob, ro.log_probs[i], atol=1e-6, rtol=0)


def test_rollout_with_cfg_and_independent_noise(tiny_pipe):
    settings = RolloutSettings(sampler="flowgrpo_sde", guidance_scale=3.0, same_noise_per_group=False, **SMALL)
    ro = rollout(tiny_pipe, ["a red cube"], 2, settings, torch.Generator().manual_seed(0))
    assert ro.embeddings.negative_prompt_embeds.shape[0] == 2
    assert not torch.equal(ro.latents[0, 0], ro.latents[0, 1])


def test_preview_scores_and_advantages(tiny_pipe):
    rewards = {"brightness": BrightnessReward(), "color": ColorReward((255, 0, 0))}
    kw = {"group_size": 4, "seed": 3, "steps": 4, "height": 32, "width": 32, "rewards": rewards, "weights": {"brightness": 0.7, "color": 0.3}}
    a = rollout_preview(tiny_pipe, ["a red cube", "a cat"], **kw)
    b = rollout_preview(tiny_pipe, ["a red cube", "a cat"], **kw)
    assert len(a.images) == 8 and a.scores == b.scores and a.advantages == b.advantages  # seeded: reproducible
    assert a.scores["brightness"] == BrightnessReward()(a.images, a.prompts).scores
    rewards_nk = torch.tensor([a.scores["brightness"], a.scores["color"]]).T
    expected = compute_advantages(rewards_nk, torch.tensor([[0.7, 0.3]] * 8), 4)
    assert_close(torch.tensor(a.advantages), expected)
    assert_close(torch.tensor(a.total), rewards_nk @ torch.tensor([0.7, 0.3]))
    with pytest.raises(DeepGenInputError, match="not selected"):
        rollout_preview(tiny_pipe, "x", **{**kw, "weights": {"ocr": 1.0}})
    with pytest.raises(DeepGenInputError, match="sampler"):
        rollout_preview(tiny_pipe, "x", **{**kw, "sampler": "euler"})
