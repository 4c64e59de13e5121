"""Rollouts for MR-GRPO (reference notes §6.3) and their scoring (§6.5-6.6), shared by the trainer and the
ComfyUI rollout preview so both compute the very same numbers.

A rollout drives the pipeline's own steps (check_inputs, encode_prompt, prepare_latents, decode_latents) and
replaces the Euler update with `sampling.sde_step`, recording x_i and the fp32 log-prob of every step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from ...errors import DeepGenInputError
from ...image_processing import tensor_to_uint8
from ...pipeline import DeepGenPipeline, PromptEmbeddings, StepCallback
from ...rewards.base import Reward, RewardOutput
from ...rewards.weights import score_matrix, weight_matrix
from ...sampling import check_sde_sampler, inference_schedule, sde_step
from ...validation import check_sampling
from .advantages import compute_advantages, weighted_total


@dataclass(frozen=True)
class RolloutSettings:
    """How images are sampled during RL (defaults: the reference's, §6.10).

    Args:
        sampler: SDE sampler ('cps_sde', 'flowgrpo_sde', 'dance_sde').
        eta: SDE noise level.
        num_inference_steps: denoising steps (all stochastic).
        guidance_scale: CFG scale; <= 1 disables CFG (the reference rolls out without CFG, §9.14).
        height, width: image size (multiples of 16).
        shift: scheduler shift override (default: the scheduler's, 3.0).
        negative_prompt: the unconditional prompt used with CFG.
        same_noise_per_group: one initial noise per prompt, shared by its G images (reference: True).
    """

    sampler: str = "cps_sde"
    eta: float = 1.0
    num_inference_steps: int = 50
    guidance_scale: float = 0.0
    height: int = 512
    width: int = 512
    shift: float | None = None
    negative_prompt: str = ""
    same_noise_per_group: bool = True

    def __post_init__(self) -> None:
        check_sde_sampler(self.sampler)
        check_sampling(self.num_inference_steps, self.guidance_scale, self.shift, self.eta)  # ranges: validation.LIMITS

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1


@dataclass
class Rollout:
    """G images per prompt with their trajectories. N = prompts x G, T = steps.

    Args:
        prompts: the N prompts (each repeated G times, groups consecutive).
        latents: (T + 1, N, C, h, w): x_0 (noise) ... x_T (final), in the model dtype.
        log_probs: (T, N) fp32 log-prob of x_{i+1} given x_i under the rollout policy.
        timesteps: (T,) DiT timesteps; sigmas: T + 1 floats.
        embeddings: per-image DiT conditioning (negatives empty without CFG).
        images: the N decoded images.
    """

    prompts: list[str]
    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    sigmas: list[float]
    embeddings: PromptEmbeddings
    images: list[Image.Image]
    group_size: int


def dit_velocity(transformer: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor, embeddings: PromptEmbeddings, guidance_scale: float) -> torch.Tensor:
    """The DiT velocity at (x, t) for the rows of `embeddings`; with `guidance_scale > 1` one [uncond; cond] batch,
    combined as uncond + s (cond - uncond) (the pipeline's CFG, §4).

    Args:
        latents: (N, C, h, w); timestep: 0-dim or (N,) on the 0-1000 scale.
    """
    n = latents.shape[0]
    if guidance_scale > 1:
        context = torch.cat([embeddings.negative_prompt_embeds, embeddings.prompt_embeds])
        pooled = torch.cat([embeddings.negative_pooled_prompt_embeds, embeddings.pooled_prompt_embeds])
        velocity = transformer(torch.cat([latents, latents]), context, pooled, timestep.expand(2 * n)).sample
        uncond, cond = velocity.chunk(2)
        return uncond + guidance_scale * (cond - uncond)
    return transformer(latents, embeddings.prompt_embeds, embeddings.pooled_prompt_embeds, timestep.expand(n)).sample


def _repeat(embeddings: PromptEmbeddings, g: int) -> PromptEmbeddings:
    return PromptEmbeddings(*(t.repeat_interleave(g, dim=0) for t in vars(embeddings).values()))


def decode_images(pipe: DeepGenPipeline, latents: torch.Tensor) -> list[Image.Image]:
    """Final latents -> PIL images with the reference's uint8 rounding."""
    return [Image.fromarray(a) for a in tensor_to_uint8(pipe.decode_latents(latents)).cpu().numpy()]


@torch.no_grad()
def rollout(
    pipe: DeepGenPipeline,
    prompts: Sequence[str],
    group_size: int,
    settings: RolloutSettings,
    generator: torch.Generator | None,
    transformer: torch.nn.Module | None = None,
    callback_on_step_end: StepCallback | None = None,
) -> Rollout:
    """Sample `group_size` images per prompt with the SDE sampler, recording every step.

    Args:
        pipe: the pipeline (its encoder/VAE are used frozen).
        prompts: P distinct prompts; the result has N = P x G images, groups consecutive.
        generator: all randomness (initial noise first, then the step noises), drawn on its device.
        transformer: the policy DiT to roll out with (default: `pipe.transformer`).
        callback_on_step_end: the pipeline's per-step hook, `fn(pipe, step, timestep, {"latents": ...})`, after
            each step (progress and cancel in ComfyUI); its return value is ignored (the trajectory is recorded).
    """
    s = settings
    prompts = list(prompts)
    pipe.check_inputs(prompts, s.height, s.width, s.num_inference_steps, s.guidance_scale, group_size, "pil")
    transformer = transformer if transformer is not None else pipe.transformer
    negatives = [s.negative_prompt] * len(prompts) if s.do_cfg else []
    embeddings = _repeat(pipe.encode_prompt(prompts, negatives), group_size)
    if s.same_noise_per_group:
        latents = pipe.prepare_latents(len(prompts), s.height, s.width, generator).repeat_interleave(group_size, dim=0)
    else:
        latents = pipe.prepare_latents(len(prompts) * group_size, s.height, s.width, generator)
    timesteps, sigmas = inference_schedule(pipe.scheduler, s.num_inference_steps, s.shift)
    timesteps = timesteps.to(pipe.device)
    trajectory, log_probs = [latents], []
    for i in range(s.num_inference_steps):
        velocity = dit_velocity(transformer, latents, timesteps[i], embeddings, s.guidance_scale)
        out = sde_step(s.sampler, velocity, latents, sigmas[i], sigmas[i + 1], eta=s.eta, generator=generator)
        latents = out.prev_latents
        trajectory.append(latents)
        log_probs.append(out.log_prob)
        if callback_on_step_end is not None:
            callback_on_step_end(pipe, i, timesteps[i], {"latents": latents})
    images = decode_images(pipe, latents)
    return Rollout([p for p in prompts for _ in range(group_size)], torch.stack(trajectory), torch.stack(log_probs),
                   timesteps, sigmas, embeddings, images, group_size)


@dataclass
class ScoredRollout:
    """A rollout with its rewards: `outputs[name]` per reward, `rewards` (N, K) fp32 (NaN = not scored) in
    `reward_names` order, `weights` (N, K), `total` (N,) weighted sum, `advantages` (N,)."""

    rollout: Rollout
    reward_names: list[str]
    outputs: dict[str, RewardOutput]
    rewards: torch.Tensor
    weights: torch.Tensor
    total: torch.Tensor
    advantages: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    reward_seconds: float = 0.0
    all_rewards: torch.Tensor | None = None  # (world x N, K) after a cross-rank gather
    all_weights: torch.Tensor | None = None


def score_images(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    rewards: Mapping[str, Reward],
    sample_weights: Sequence[Mapping[str, float]],
    group_size: int,
) -> tuple[list[str], dict[str, RewardOutput], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every reward on every image, in alphabetical order (§6.5).

    Returns:
        (reward names, outputs by name, rewards (N, K) fp32 with NaN = not scored, weights (N, K), weighted total (N,)).
    """
    if len(sample_weights) != len(images):
        raise DeepGenInputError(f"got {len(sample_weights)} weight sets for {len(images)} images; give one per image.")
    names = sorted(rewards)
    outputs = {name: rewards[name](list(images), list(prompts), group_size=group_size) for name in names}
    matrix = score_matrix({n: o.scores for n, o in outputs.items()}, names)
    weights = weight_matrix([dict(w) for w in sample_weights], names)
    return names, outputs, matrix, weights, weighted_total(matrix, weights)


def score_rollout(
    ro: Rollout,
    rewards: Mapping[str, Reward],
    sample_weights: Sequence[Mapping[str, float]],
    advantage_mode: str = "gdpo",
    advantage_clip: float = 5.0,
    normalize: bool = True,
) -> ScoredRollout:
    """Evaluate every reward on every image (alphabetical order, §6.5) and derive the advantages.

    Args:
        sample_weights: per image, reward name -> weight (its dataset's weights; missing rewards weigh 0).
        normalize: compute advantages here (False when the trainer normalises over all ranks after a gather).
    """
    started = time.perf_counter()
    names, outputs, matrix, weights, total = score_images(ro.images, ro.prompts, rewards, sample_weights, ro.group_size)
    scored = ScoredRollout(ro, names, outputs, matrix, weights, total, reward_seconds=time.perf_counter() - started)
    if normalize:
        scored.advantages = compute_advantages(matrix, weights, ro.group_size, advantage_mode, advantage_clip)
    return scored
