"""MR-GRPO maths on hand-made numbers: GDPO advantages, clipped objective, clip fraction, v-space KL."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from deepgen_core.errors import DeepGenInputError
from deepgen_core.rewards.weights import score_matrix, weight_matrix
from deepgen_core.train.rl.advantages import batch_normalize, compute_advantages, gdpo_advantages, group_normalize
from deepgen_core.train.rl.losses import clip_fraction, clipped_policy_loss, probability_ratio, velocity_kl

NAN = float("nan")


def test_group_normalize_hand_computed():
    # Group [1, 2, 3]: mean 2, Bessel std 1 -> (-1, 0, 1) / (1 + 1e-4). Group [5, 5, 5]: zero variance -> 0.
    values = torch.tensor([[1.0], [2.0], [3.0], [5.0], [5.0], [5.0]])
    expected = torch.tensor([[-1.0], [0.0], [1.0], [0.0], [0.0], [0.0]]) / torch.tensor([[1.0001]] * 3 + [[1.0]] * 3)
    assert_close(group_normalize(values, 3), expected, atol=1e-6, rtol=0)


def test_group_normalize_ignores_unscored_members():
    # Group [0, NaN, 4, 2]: scored mean 2, Bessel std sqrt((4 + 4 + 0) / 2) = 2 -> (-1, 0, 1, 0) / 2.0001; NaN -> 0.
    # Group [7, NaN, NaN, NaN]: one scored member -> no signal, all 0.
    values = torch.tensor([[0.0], [NAN], [4.0], [2.0], [7.0], [NAN], [NAN], [NAN]])
    out = group_normalize(values, 4)
    assert_close(out[:4, 0], torch.tensor([-2.0, 0.0, 2.0, 0.0]) / 2.0001, atol=1e-6, rtol=0)
    assert_close(out[4:, 0], torch.zeros(4))


def test_gdpo_advantages_hand_computed():
    # Two rewards, two groups of 2. Reward a: group 1 [0, 1] -> (-1, 1)/(s + eps) with s = sqrt(0.5) ~ 0.7071;
    # group 2 [3, 3] -> 0. Reward b: group 1 [NaN, NaN] -> 0; group 2 [0, 2] -> (-1, 1) * 1/(sqrt(2) + eps).
    rewards = torch.tensor([[0.0, NAN], [1.0, NAN], [3.0, 0.0], [3.0, 2.0]])
    weights = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.5, 0.5], [0.5, 0.5]])
    a = 0.5 / (math.sqrt(0.5) + 1e-4)  # |centered| / (std + eps) for group 1 of reward a
    b = 1.0 / (math.sqrt(2.0) + 1e-4)
    combined = torch.tensor([-0.7 * a, 0.7 * a, -0.5 * b, 0.5 * b])
    expected = (combined - combined.mean()) / (combined.std() + 1e-4)
    assert_close(gdpo_advantages(rewards, weights, 2), expected, atol=1e-5, rtol=0)


def test_all_zero_variance_batch_gives_zero_advantages_and_clip_applies():
    rewards = torch.ones(8, 2)
    assert_close(compute_advantages(rewards, torch.ones(8, 2), 4), torch.zeros(8))
    # Batch normalisation of [0]*7 + [1]: the outlier gets (1 - 1/8) / (std + eps) = 2.47 < 5; clip at 1 cuts it.
    values = torch.tensor([0.0] * 7 + [1.0])
    assert_close(batch_normalize(values)[-1], (1 - 1 / 8) / (values.std() + 1e-4))
    clipped = compute_advantages(values[:, None], torch.ones(8, 1), 8, mode="reinforcepp", clip=1.0)
    assert clipped.max().item() == 1.0


def test_modes_and_errors():
    rewards = torch.tensor([[1.0], [3.0], [2.0], [2.0]])
    # grpo: group-normalise the total: [1, 3] -> (-1, 1) * 1/(sqrt(2) + eps); [2, 2] -> 0.
    g = 1 / (math.sqrt(2) + 1e-4)
    assert_close(compute_advantages(rewards, torch.ones(4, 1), 2, mode="grpo"), torch.tensor([-g, g, 0.0, 0.0]))
    with pytest.raises(DeepGenInputError, match="gdpo"):
        compute_advantages(rewards, torch.ones(4, 1), 2, mode="ppo")
    with pytest.raises(DeepGenInputError, match="groups of 3"):
        compute_advantages(rewards, torch.ones(4, 1), 3)


def test_score_and_weight_matrices():
    scores = score_matrix({"a": [1.0, None], "b": [0.5, 0.25]}, ["a", "b"])
    assert torch.isnan(scores[1, 0]) and scores[0].tolist() == [1.0, 0.5]
    assert weight_matrix([{"a": 2.0}, {"b": 1.0}], ["a", "b"]).tolist() == [[2.0, 0.0], [0.0, 1.0]]


def test_ratio_is_fp32_and_exact():
    new = torch.tensor([-0.5, -0.25], dtype=torch.float32)
    old = torch.tensor([-0.5001, -0.25], dtype=torch.float32)
    ratio = probability_ratio(new, old)
    assert ratio.dtype == torch.float32
    assert_close(ratio, torch.tensor([math.exp(1e-4), 1.0]), atol=1e-6, rtol=0)


def test_clipped_policy_loss_and_fraction_hand_computed():
    c = 0.1
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    ratio = torch.tensor([1.2, 0.8, 1.2, 0.8])
    # i0: A>0, rho>1+c: max(-1.2, -1.1) = -1.1 (clipped, no gradient). i1: A>0, rho<1-c: max(-0.8, -0.9) = -0.8.
    # i2: A<0, rho>1+c: max(1.2, 1.1) = 1.2. i3: A<0, rho<1-c: max(0.8, 0.9) = 0.9 (clipped). Mean = 0.2/4 = 0.05.
    assert_close(clipped_policy_loss(adv, ratio, c), torch.tensor(0.05))
    assert_close(clip_fraction(adv, ratio, c), torch.tensor(0.5))
    # Gradient flows only through the unclipped samples i1 and i2: d/d rho = -A / 4.
    r = ratio.clone().requires_grad_(True)
    clipped_policy_loss(adv, r, c).backward()
    assert_close(r.grad, torch.tensor([0.0, -0.25, 0.25, 0.0]))


def test_velocity_kl_hand_computed():
    v = torch.zeros(2, 1, 2, 2)
    ref = torch.zeros(2, 1, 2, 2)
    ref[0] = 1.0  # (v - ref)^2 = 1 everywhere for sample 0, 0 for sample 1
    std = torch.tensor(0.5)
    # 1 / (2 * 0.25 + 1e-7) for sample 0, 0 for sample 1.
    assert_close(velocity_kl(v, ref, std), torch.tensor([1 / (0.5 + 1e-7), 0.0]))
    assert_close(velocity_kl(v, v, 0.0), torch.zeros(2))
