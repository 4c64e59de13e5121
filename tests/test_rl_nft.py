"""DiffusionNFT in the RL trainer (`policy.algorithm: nft`): the loss maths, learning, the rollout ("old") policy and
its soft update, and resuming with it."""

from __future__ import annotations

import pytest
import torch
from test_rl_trainer import tiny_config, tiny_rl_components

from deepgen_core.errors import DeepGenInputError
from deepgen_core.rewards import BrightnessReward
from deepgen_core.train.rl.losses import nft_loss, nft_optimality
from deepgen_core.train.rl.trainer import RLTrainer


def _velocities(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    old, target = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    return old, target


def test_optimality_is_the_clipped_advantage_mapped_to_0_1():
    r = nft_optimality(torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0]))
    assert r.tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_nft_loss_pulls_towards_good_samples_and_pushes_from_bad_ones(beta):
    old, target = _velocities()
    r = torch.tensor([1.0, 0.5, 0.0])
    v = old.clone().requires_grad_(True)
    loss = nft_loss(v, old, target, r, beta)
    # At v_theta = v_old both implicit policies equal v_old: every sample's loss is the plain flow-matching error.
    assert torch.allclose(loss, (old - target).pow(2).flatten(1).mean(1))
    loss.sum().backward()
    expected = 2 * beta * (2 * r - 1)[:, None, None, None] * (old - target) / old[0].numel()
    assert torch.allclose(v.grad, expected, atol=1e-6)
    assert v.grad[1].abs().max() < 1e-7  # r = 0.5: no signal (up to rounding)
    # A small step against the gradient moves the good sample's velocity towards the target, the bad one's away.
    moved = old - 0.1 * v.grad * old[0].numel()
    dist = lambda a: (a - target).pow(2).flatten(1).sum(1)
    assert dist(moved)[0] < dist(old)[0] and dist(moved)[2] > dist(old)[2]


def test_nft_loss_with_beta_one_and_r_one_is_flow_matching():
    old, target = _velocities(1)
    v = torch.randn_like(old)
    loss = nft_loss(v, old, target, torch.ones(3), 1.0)
    assert torch.allclose(loss, (v - target).pow(2).flatten(1).mean(1))


def _nft_config(tmp_path, **sections):
    policy = {"algorithm": "nft", "kl_beta": 0.0, **sections.pop("policy", {})}
    rollout = {"eta": 0.0, "same_noise_per_group": False, **sections.pop("rollout", {})}
    return tiny_config(tmp_path, policy=policy, rollout=rollout, **sections)


@pytest.mark.slow
def test_nft_raises_the_reward_from_deterministic_rollouts(tmp_path):
    """Brightness reward through the linear preview decoder, ODE rollouts (eta 0): DiffusionNFT only needs the clean
    samples, so the reward must rise without any SDE noise in the rollouts."""
    config = _nft_config(tmp_path, rollout={"sampler": "cps_sde"}, optim={"lr": 3e-3}, run={"max_steps": 20})
    history = RLTrainer(config, components=tiny_rl_components()).run().history
    rewards = [h["reward"] for h in history]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, f"mean reward did not rise clearly: first 4 steps {first:.3f}, last 4 {last:.3f}"
    assert all(h["clip_frac"] == 0 and h["optimizer_updates"] == 1 for h in history)


@pytest.mark.parametrize(("decay", "reference_stepping"), [(0.0, False), (0.0, True), (0.5, False)])
def test_the_rollout_policy_follows_the_trained_dit(tmp_path, decay, reference_stepping):
    """old <- d old + (1 - d) theta after each step, and rollouts come from it. At d = 0 with one update a step it is
    the trained DiT itself (no copy); reference_stepping updates within a step, so it keeps a copy, equal after it."""
    components = tiny_rl_components()
    start = {n: p.detach().clone() for n, p in components.transformer.named_parameters()}
    config = _nft_config(tmp_path, policy={"nft_old_decay": decay, "reference_stepping": reference_stepping}, run={"max_steps": 2})
    trainer = RLTrainer(config, rewards={"brightness": BrightnessReward()}, components=components)
    trainer.run()
    if decay == 0 and not reference_stepping:
        assert trainer.old is None
        return
    theta = dict(components.transformer.named_parameters())  # trained in place
    old = dict(trainer.old.named_parameters())
    changed = [n for n in start if not torch.equal(theta[n].detach(), start[n])]
    assert changed
    for name in changed:
        if decay == 0:
            assert torch.equal(old[name], theta[name].detach()), name
        else:  # two soft updates: strictly between the start and the trained weights
            assert not torch.equal(old[name], theta[name].detach()) and not torch.equal(old[name], start[name]), name


def test_without_a_copy_v_old_is_the_dits_own_velocity():
    """`old_model=None` (decay 0, one update a step) gives the same loss as an identical frozen copy, one forward fewer."""
    import copy

    from deepgen_core.pipeline import PromptEmbeddings
    from deepgen_core.presets import tiny_components
    from deepgen_core.train.rl.config import PolicyConfig
    from deepgen_core.train.rl.rollout import Rollout, RolloutSettings
    from deepgen_core.train.rl.update import nft_micro_batch_losses

    dit = tiny_components(0).transformer
    g = torch.Generator().manual_seed(0)
    n, steps = 4, 3
    latents = torch.randn(steps + 1, n, 16, 4, 4, generator=g)
    dim = dit.config.joint_attention_dim
    emb = PromptEmbeddings(torch.randn(n, 5, dim, generator=g), torch.randn(n, dit.config.pooled_projection_dim, generator=g),
                           torch.zeros(0), torch.zeros(0))
    ro = Rollout(["p"] * n, latents, torch.zeros(steps, n), torch.tensor([1000.0, 600.0, 300.0]), [1.0, 0.6, 0.3, 0.0], emb, [], 2)
    policy = PolicyConfig(algorithm="nft", kl_beta=0.0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    noise = torch.randn(n, 16, 4, 4, generator=g)
    settings = RolloutSettings(guidance_scale=0.0)
    shared = nft_micro_batch_losses(dit, None, dit, ro, adv, 1, slice(0, n), noise, settings, policy).loss
    copied = nft_micro_batch_losses(dit, copy.deepcopy(dit), dit, ro, adv, 1, slice(0, n), noise, settings, policy).loss
    assert torch.equal(shared, copied)


def test_resume_with_a_soft_updated_rollout_policy_repeats_the_run(tmp_path):
    cfg = {"policy": {"nft_old_decay": 0.5}}
    full = RLTrainer(_nft_config(tmp_path / "a", run={"max_steps": 4, "save_every": 2}, **cfg)).run()
    RLTrainer(_nft_config(tmp_path / "b", run={"max_steps": 2, "save_every": 2}, **cfg)).run()
    assert (tmp_path / "b" / "run" / "checkpoints" / "step-00000002" / "nft-old.safetensors").is_file()
    resumed = RLTrainer(_nft_config(tmp_path / "b", run={"max_steps": 4, "save_every": 2}, **cfg)).run()
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in full.history[2:]]
    assert [h["loss/policy"] for h in resumed.history] == [h["loss/policy"] for h in full.history[2:]]


def test_nft_config_validation(tmp_path):
    with pytest.raises(DeepGenInputError, match="policy.algorithm must be one of"):
        tiny_config(tmp_path, policy={"algorithm": "ppo"})
    with pytest.raises(DeepGenInputError, match="policy.nft_beta must be > 0"):
        tiny_config(tmp_path, policy={"algorithm": "nft", "nft_beta": 0.0})
    with pytest.raises(DeepGenInputError, match=r"policy.nft_old_decay must be in \[0, 1\)"):
        tiny_config(tmp_path, policy={"algorithm": "nft", "nft_old_decay": 1.0})
    with pytest.raises(DeepGenInputError, match="set rollout.same_noise_per_group: false"):
        tiny_config(tmp_path, rollout={"eta": 0.0, "same_noise_per_group": True})


def test_adaptive_weighting_bounds_each_samples_pull():
    """With sigma the branch loss is mean(e^2) / sg(mean|e|), e = sigma (v_branch - v): at v_theta = v_old the gradient
    is 2 beta (2r - 1) sigma e / (numel mean|e|), so a sample with a 100x larger error pulls no harder."""
    old, target = _velocities(2)
    old[1] = target[1] + 100 * (old[1] - target[1])
    r = torch.tensor([1.0, 1.0, 0.0])
    v = old.clone().requires_grad_(True)
    sigma = 0.4
    nft_loss(v, old, target, r, 1.0, sigma).sum().backward()
    e = sigma * (old - target)
    expected = 2 * (2 * r - 1)[:, None, None, None] * sigma * e / (old[0].numel() * e.flatten(1).abs().mean(1)[:, None, None, None])
    assert torch.allclose(v.grad, expected, atol=1e-6)
    norms = v.grad.flatten(1).norm(dim=1)
    assert norms[1] < 2 * norms[0]  # the outlier's error is 100x larger, its pull is not
    plain = old.clone().requires_grad_(True)
    nft_loss(plain, old, target, r, 1.0).sum().backward()
    assert plain.grad[1].norm() > 50 * plain.grad[0].norm()


@pytest.mark.parametrize("group_noise", [False, True])
def test_nft_group_noise_cancels_the_noise_of_a_groups_pulls_and_pushes(group_noise):
    """A group of identical images with balanced advantages carries no signal. With one forward noise per group
    (`nft_group_noise`) the update sees exactly that (zero gradient); with a fresh noise per image the pulls and pushes
    land on different noisy targets and leave a noise gradient."""
    from deepgen_core.pipeline import PromptEmbeddings
    from deepgen_core.presets import tiny_components
    from deepgen_core.train.rl.config import PolicyConfig
    from deepgen_core.train.rl.rollout import Rollout, RolloutSettings
    from deepgen_core.train.rl.update import policy_update

    dit = tiny_components(0).transformer
    g = torch.Generator().manual_seed(0)
    group, groups, steps = 4, 2, 3
    n = group * groups
    final = torch.randn(groups, 16, 4, 4, generator=g).repeat_interleave(group, dim=0)  # each group: G equal images
    latents = torch.cat([torch.randn(steps, n, 16, 4, 4, generator=g), final[None]])
    dim = dit.config.joint_attention_dim
    emb = PromptEmbeddings(torch.randn(groups, 5, dim, generator=g).repeat_interleave(group, dim=0),
                           torch.randn(groups, dit.config.pooled_projection_dim, generator=g).repeat_interleave(group, dim=0),
                           torch.zeros(0), torch.zeros(0))
    ro = Rollout(["p"] * n, latents, torch.zeros(steps, n), torch.tensor([1000.0, 600.0, 300.0]), [1.0, 0.6, 0.3, 0.0], emb, [], group)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5] * groups)  # balanced within each group, inside the clip
    policy = PolicyConfig(algorithm="nft", kl_beta=0.0, micro_batch_size=3, nft_group_noise=group_noise)  # micro-batches cut the groups
    norms = []

    def optimizer_step():
        norms.append(torch.cat([p.grad.flatten() for p in dit.parameters() if p.grad is not None]).norm().item())
        dit.zero_grad()

    policy_update(ro, advantages, dit, dit, RolloutSettings(guidance_scale=0.0), policy, [0, 1], lambda loss, _: loss.backward(),
                  optimizer_step, noise_generator=torch.Generator().manual_seed(1))
    assert len(norms) == 1
    if group_noise:
        assert norms[0] < 1e-6, norms
    else:
        assert norms[0] > 1e-3, norms
