"""SDE steps for RL rollouts (reference notes §6.3-6.4): means, stds and log-probs against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from deepgen_core.errors import DeepGenInputError
from deepgen_core.sampling import SDE_SAMPLERS, euler_step, sde_step

# x = 1, v = 0.5, sigma = 0.6, sigma' = 0.4 everywhere (dt = -0.2).
X, V, S, S_NEXT = 1.0, 0.5, 0.6, 0.4


def _const(value: float, shape=(2, 4, 3, 3)) -> torch.Tensor:
    return torch.full(shape, value)


@pytest.mark.parametrize(
    ("sampler", "eta", "mean", "std"),
    [
        # CPS, eta 1: x0 = 1 - 0.6*0.5 = 0.7; std = sigma' = 0.4; mean = (1 - 0.4) * 0.7 + sqrt(0.16 - 0.16) * x1 = 0.42
        ("cps_sde", 1.0, 0.42, 0.4),
        # CPS, eta 0.5: std = 0.4 sin(pi/4); x1 = 1 + 0.4*0.5 = 1.2; mean = 0.42 + sqrt(0.16 - std^2) * 1.2
        ("cps_sde", 0.5, 0.42 + math.sqrt(0.16 - 0.08) * 1.2, 0.4 * math.sin(math.pi / 4)),
        # Flow-GRPO: s^2 = 0.6/0.4 = 1.5; mean = 1*(1 + 1.5*(-0.2)/1.2) + 0.5*(1 + 1.5*0.4/1.2)*(-0.2) = 0.75 - 0.15
        ("flowgrpo_sde", 1.0, 0.6, math.sqrt(1.5) * math.sqrt(0.2)),
        # Dance: x - (1 - sigma) x0 = 1 - 0.4*0.7 = 0.72; 0.5 * 0.72 / 0.36 = 1; mean = 1 + (0.5 + 1) * (-0.2) = 0.7
        ("dance_sde", 1.0, 0.7, math.sqrt(0.2)),
    ],
)
def test_sde_mean_std_closed_form(sampler, eta, mean, std):
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    out = sde_step(sampler, _const(V), _const(X), S, S_NEXT, eta=eta, noise=noise)
    assert_close(out.mean, _const(mean), atol=1e-6, rtol=0)
    assert_close(out.std.expand_as(out.mean), _const(std), atol=1e-6, rtol=0)
    assert_close(out.prev_latents, out.mean + out.std * noise, atol=1e-6, rtol=0)
    assert out.log_prob.shape == (2,) and out.log_prob.dtype == torch.float32


def test_cps_log_prob_is_negative_mean_square():
    # Reference's simplified CPS form: log p = -mean (x' - mean)^2 = -mean (std * noise)^2 with std = 0.4.
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    out = sde_step("cps_sde", _const(V), _const(X), S, S_NEXT, eta=1.0, noise=noise)
    assert_close(out.log_prob, -(0.16 * noise**2).flatten(1).mean(1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", ["flowgrpo_sde", "dance_sde"])
def test_gaussian_log_prob_matches_normal_density(sampler):
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    out = sde_step(sampler, _const(V), _const(X), S, S_NEXT, eta=1.0, noise=noise)
    expected = torch.distributions.Normal(out.mean, out.std).log_prob(out.prev_latents).flatten(1).mean(1)
    assert_close(out.log_prob, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", SDE_SAMPLERS)
def test_eta_zero_is_the_euler_step(sampler):
    x, v = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    out = sde_step(sampler, v, x, S, S_NEXT, eta=0.0, noise=torch.randn(2, 4, 3, 3))
    assert_close(out.prev_latents, euler_step(x, v, S, S_NEXT), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", SDE_SAMPLERS)
def test_scoring_a_stored_sample_reproduces_its_log_prob(sampler):
    x, v = torch.randn(3, 4, 3, 3), torch.randn(3, 4, 3, 3)
    sampled = sde_step(sampler, v, x, S, S_NEXT, eta=1.0, generator=torch.Generator().manual_seed(3))
    scored = sde_step(sampler, v, x, S, S_NEXT, eta=1.0, prev_latents=sampled.prev_latents)
    assert_close(scored.log_prob, sampled.log_prob, atol=0, rtol=0)
    # A different velocity moves the mean, hence lowers the density of the same sample.
    worse = sde_step(sampler, v + 0.5, x, S, S_NEXT, eta=1.0, prev_latents=sampled.prev_latents)
    assert (worse.log_prob < scored.log_prob).all()


def test_generator_reproduces_and_bf16_latents_give_fp32_log_probs():
    x, v = torch.randn(2, 4, 3, 3).bfloat16(), torch.randn(2, 4, 3, 3).bfloat16()
    a = sde_step("cps_sde", v, x, S, S_NEXT, eta=1.0, generator=torch.Generator().manual_seed(7))
    b = sde_step("cps_sde", v, x, S, S_NEXT, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert a.prev_latents.dtype == torch.bfloat16 and a.log_prob.dtype == torch.float32
    assert torch.equal(a.prev_latents, b.prev_latents)
    expected_noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(7))
    assert_close(a.prev_latents.float(), (a.mean + a.std * expected_noise).bfloat16().float())


def test_flowgrpo_at_sigma_one_uses_the_next_sigma():
    # sigma = 1 would divide by zero; the reference substitutes sigma_1 (the next sigma): s^2 = 1 / (1 - 0.9) = 10.
    out = sde_step("flowgrpo_sde", _const(V), _const(X), 1.0, 0.9, eta=1.0, noise=torch.zeros(2, 4, 3, 3))
    assert_close(out.std, torch.tensor(math.sqrt(10 * 0.1)), atol=1e-6, rtol=0)


def test_per_sample_sigmas_and_final_cps_step_is_deterministic():
    x, v = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    out = sde_step("cps_sde", v, x, torch.tensor([0.6, 0.2]), torch.tensor([0.4, 0.0]), eta=1.0, noise=torch.randn(2, 4, 3, 3))
    single = sde_step("cps_sde", v[1:], x[1:], 0.2, 0.0, eta=1.0, noise=torch.randn(1, 4, 3, 3))
    assert_close(out.prev_latents[1:], x[1:] - 0.2 * v[1:], atol=1e-6, rtol=0)
    assert_close(single.prev_latents, x[1:] - 0.2 * v[1:], atol=1e-6, rtol=0)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(DeepGenInputError, match="cps_sde"):
        sde_step("ddim", torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), 0.5, 0.4, eta=1.0)
