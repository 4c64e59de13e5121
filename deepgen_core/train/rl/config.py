"""MR-GRPO configuration (reference notes §6.10): one dataclass with sections; every field has help and a default.

Recipes (`train/recipes/rl*.yaml`) set fields; `load_rl_config` reads a recipe plus `key.sub=value` overrides.
Nothing reads the environment. Fields that depart from the reference's behaviour say so and name the switch
that restores it (`reference_stepping`, `advantage_scope`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import DeepGenInputError
from ...sampling import check_sde_sampler
from ..config import (
    DataConfig,
    DistributedConfig,
    ModelConfig,
    OptimConfig,
    read_recipe,
)
from ..config_checks import check_section
from .advantages import ADVANTAGES


def _help(default: Any, text: str, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class RLRolloutConfig:
    group_size: int = _help(8, "images per prompt (G, reference rollout_n = 8)")
    prompts_per_step: int = _help(4, "prompts per process per step (reference: 32 images / 8 = 4)")
    sampler: str = _help("cps_sde", "SDE sampler: cps_sde, flowgrpo_sde or dance_sde")
    eta: float = _help(1.0, "SDE noise level")
    num_inference_steps: int = _help(50, "denoising steps, all stochastic")
    guidance_scale: float = _help(0.0, "CFG scale in rollouts and updates; <= 1 disables CFG (reference: no CFG, §9.14)")
    height: int = _help(512, "image height")
    width: int = _help(512, "image width")
    same_noise_per_group: bool = _help(True, "one initial noise per prompt for its G images (reference init_same_noise)")


ALGORITHMS = ("grpo", "nft")


@dataclass
class PolicyConfig:
    algorithm: str = _help("grpo", "'grpo': MR-GRPO's clipped policy gradient on the SDE steps' log-probs (reference default); 'nft': DiffusionNFT "
                           "(the reference trainer's alternative, arXiv 2509.16117): reward-weighted flow matching on the rollouts' clean "
                           "samples with implicit positive/negative policies; works with deterministic rollouts (rollout.eta: 0)")
    nft_beta: float = _help(1.0, "DiffusionNFT's implicit guidance strength beta (algorithm 'nft')")
    nft_adaptive_weight: bool = _help(True, "DiffusionNFT's adaptive loss weighting: each branch's x0-space error over its own detached mean "
                                      "absolute value (see losses.nft_loss); false: the plain v-space loss")
    nft_guidance_scale: float = _help(1.0, "CFG scale of the velocities in the DiffusionNFT loss: 1 trains the conditional velocity only, as "
                                      "DiffusionNFT's CFG-free training does (the unconditional branch, shared by every prompt, gets no gradient); "
                                      "the rollout's scale trains the guided velocity")
    nft_old_decay: float = _help(0.0, "DiffusionNFT's soft update of the rollout ('old') policy after each step: old <- d old + (1 - d) theta; "
                                 "0 rolls out with the trained DiT itself (algorithm 'nft'). A decay > 0, or reference_stepping, keeps a frozen copy: an "
                                 "fp32 DiT of memory, 8 GiB at real size")
    nft_group_noise: bool = _help(False, "DiffusionNFT: forward-noise the G images of a group with one shared noise per trained step (common random "
                                  "numbers). Their flow-matching targets eps - x0 then differ only by the images, and since a group's "
                                  "optimalities balance around 1/2 the eps parts of its pulls and pushes cancel; with a fresh noise per image "
                                  "they do not, and where good and bad images differ little (low-contrast glyphs) that noise can swamp the "
                                  "signal. false: a fresh noise per image (DiffusionNFT's own)")
    timestep_fraction: float = _help(0.6, "fraction of the denoising steps trained per rollout (random subset, sorted)")
    include_last_step: bool = _help(False, "allow the last step (deterministic for CPS) in the subset")
    clip_range: float = _help(1e-4, "PPO ratio clip c")
    kl_beta: float = _help(5e-7, "weight of the v-space KL to the frozen starting DiT (for 'nft': the mean squared velocity difference, "
                                 "without the SDE std)")
    micro_batch_size: int = _help(32, "images per policy forward/backward")
    advantage_mode: str = _help("gdpo", f"one of {sorted(ADVANTAGES)}")
    advantage_clip: float = _help(5.0, "clamp advantages to [-clip, clip]")
    advantage_scope: str = _help("global", "'global': normalise advantages over all ranks' images (correct); 'per_rank': each GPU on its own batch (reference, §9.13)")
    reference_stepping: bool = _help(False, "reproduce the reference's optimizer step after EVERY micro-batch backward and after the SFT backward (§6.9, §9.12); default: one step per rollout batch")
    sft_coef: float = _help(1e-4, "lambda of the convex mix (1 - lambda) GRPO + lambda SFT (0 disables the auxiliary loss)")
    sft_every: int = _help(1, "auxiliary SFT loss every N steps")
    sft_micro_batch_size: int = _help(32, "images per auxiliary SFT batch (data in the `sft` section, text-to-image sources)")
    reference_dtype: str = _help("float32", "storage of the frozen KL reference DiT: 'float32' computes exactly as the fp32-master policy does under autocast (KL is 0 until the first update); 'bfloat16' halves its memory, but under bf16 mixed precision the KL then starts at the rounding difference, which the v-space KL's 1/std^2 magnifies into a noise gradient")


@dataclass
class RLRewardsConfig:
    datasets: str | None = _help(None, "prompt/reward-weight YAML (see deepgen_core.rewards.weights); required unless `prompts` is given")
    prompts: list[str] = _help(None, "inline prompts (used with `weights` when no datasets YAML is given)", factory=list)
    weights: dict[str, float] = _help(None, "reward -> weight for inline prompts", factory=dict)
    options: dict[str, dict] = _help(None, "reward -> constructor options, e.g. {clip_sim: {path: /models/clip}}; {url: ...} makes it an HTTP client of `deepgen reward-server`", factory=dict)


@dataclass
class CurriculumConfig:
    hard_weight: float = _help(1.0, "draw the prompts the starting model gets wrong this many times as often (1: off). Before step 1 every distinct prompt is rendered with the deterministic sampler (the rollout's size, steps and CFG) and scored; see rl/curriculum.py")
    threshold: float = _help(1.0, "a prompt is hard when its mean weighted reward is below this fraction of its total reward weight")
    images_per_prompt: int = _help(1, "images rendered per distinct prompt to score it")
    batch_size: int = _help(64, "prompts per rendering call")


@dataclass
class RLRunConfig:
    output_dir: str = _help("runs/deepgen-rl", "run folder: checkpoints/, samples/, metrics.jsonl, tensorboard/")
    max_steps: int = _help(1000, "RL steps (one rollout batch each)")
    max_minutes: float = _help(0.0, "wall-clock budget in minutes (0: none): past it the run ends at the next step as if max_steps were reached (checkpoint + export); the LR schedule still follows max_steps and a re-run resumes")
    seed: int = _help(42, "seed of prompts, noise and timestep subsets (derived per step and rank, so resumes reproduce)")
    save_every: int = _help(50, "checkpoint every N steps (0: only at the end)")
    keep_last: int = _help(0, "keep the N newest checkpoints (0: all, reference)")
    resume: str = _help("auto", "'auto' (latest complete checkpoint), 'never', or a checkpoint folder")
    log_every: int = _help(1, "average and log metrics every N steps")
    save_images_every: int = _help(1, "save the first group's rollout grid with rewards every N steps (0: never)")
    tensorboard: bool = _help(True, "TensorBoard scalars under output_dir/tensorboard")
    max_failed_steps: int = _help(3, "stop the run with an error after this many consecutive steps in which no reward was scored (a reward server "
                                     "that never answers); 0: never stop")


def rl_optim() -> OptimConfig:
    """Reference RL optimiser (§6.10): AdamW lr 2e-6, HF betas, no decay, constant LR after a 20-step linear warm-up
    from 0 (the shared warm-up + cosine schedule with a floor of 1 is exactly constant_with_warmup)."""
    return OptimConfig(lr=2e-6, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8, grad_clip=1.0, warmup_steps=20,
                       warmup_start_factor=0.0, min_lr_ratio=1.0)


@dataclass
class RLConfig:
    model: ModelConfig = _help(None, "policy model: the SFT DeepGen (converted folder or checkpoint), or 'tiny'", factory=lambda: ModelConfig(gradient_checkpointing=True))
    rollout: RLRolloutConfig = _help(None, "rollouts", factory=RLRolloutConfig)
    policy: PolicyConfig = _help(None, "policy objective", factory=PolicyConfig)
    rewards: RLRewardsConfig = _help(None, "rewards and prompts", factory=RLRewardsConfig)
    curriculum: CurriculumConfig = _help(None, "hard-prompt curriculum (off by default)", factory=CurriculumConfig)
    sft: DataConfig = _help(None, "data of the auxiliary SFT loss (text-to-image sources; stage-2 formats)", factory=DataConfig)
    optim: OptimConfig = _help(None, "optimizer and schedule (RL defaults)", factory=rl_optim)
    distributed: DistributedConfig = _help(None, "accelerate / DeepSpeed", factory=DistributedConfig)
    run: RLRunConfig = _help(None, "run, checkpoints, logging", factory=RLRunConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                defaults = _DEFAULTS[f.name]() if f.name in _DEFAULTS else {}
                setattr(self, f.name, _from_dict(_SECTIONS[f.name], {**defaults, **value}, f.name))
        self._validate()

    def _validate(self) -> None:
        r, p = self.rollout, self.policy
        check_sde_sampler(r.sampler)
        if r.group_size < 2:
            raise DeepGenInputError(f"rollout.group_size must be >= 2: advantages compare the images of a group; got {r.group_size}.")
        if not 0 < p.timestep_fraction <= 1:
            raise DeepGenInputError(f"policy.timestep_fraction must be in (0, 1], got {p.timestep_fraction}.")
        if int(r.num_inference_steps * p.timestep_fraction) < 1:
            raise DeepGenInputError("policy.timestep_fraction x rollout.num_inference_steps trains no step; raise one of them.")
        if r.eta == 0 and r.same_noise_per_group:
            raise DeepGenInputError("rollout.eta 0 (deterministic rollouts) with rollout.same_noise_per_group makes the images of a group identical, "
                                    "so no advantage; set rollout.same_noise_per_group: false.")
        if p.algorithm not in ALGORITHMS:
            raise DeepGenInputError(f"policy.algorithm must be one of {list(ALGORITHMS)}, got {p.algorithm!r}.")
        if p.nft_beta <= 0:
            raise DeepGenInputError(f"policy.nft_beta must be > 0, got {p.nft_beta}.")
        if p.nft_guidance_scale > 1 and r.guidance_scale <= 1:
            raise DeepGenInputError("policy.nft_guidance_scale > 1 needs CFG rollouts (rollout.guidance_scale > 1, which encodes the negatives); "
                                    "or set policy.nft_guidance_scale: 1.")
        if not 0 <= p.nft_old_decay < 1:
            raise DeepGenInputError(f"policy.nft_old_decay must be in [0, 1), got {p.nft_old_decay}.")
        if p.advantage_mode not in ADVANTAGES:
            raise DeepGenInputError(f"policy.advantage_mode must be one of {sorted(ADVANTAGES)}, got {p.advantage_mode!r}.")
        if p.advantage_scope not in ("global", "per_rank"):
            raise DeepGenInputError(f"policy.advantage_scope must be 'global' or 'per_rank', got {p.advantage_scope!r}.")
        if not 0 <= p.sft_coef < 1:
            raise DeepGenInputError(f"policy.sft_coef must be in [0, 1), got {p.sft_coef}.")
        if p.sft_coef > 0 and not self.sft.sources:
            raise DeepGenInputError("policy.sft_coef > 0 needs sft.sources (text-to-image data for the auxiliary loss); or set policy.sft_coef: 0.")
        if any(src.task != "text2image" for src in self.sft.sources):
            raise DeepGenInputError("sft.sources must all be text-to-image: RL trains text-to-image only (§6.1).")
        if self.rewards.datasets is None and not (self.rewards.prompts and self.rewards.weights):
            raise DeepGenInputError("give rewards.datasets (a prompt/reward YAML) or both rewards.prompts and rewards.weights.")
        if self.distributed.mixed_precision not in ("bf16", "no"):
            raise DeepGenInputError(f"distributed.mixed_precision must be 'bf16' or 'no', got {self.distributed.mixed_precision!r}.")
        if p.reference_dtype not in ("float32", "bfloat16"):
            raise DeepGenInputError(f"policy.reference_dtype must be 'float32' or 'bfloat16', got {p.reference_dtype!r}.")
        if p.reference_dtype == "bfloat16" and self.distributed.mixed_precision != "bf16":
            raise DeepGenInputError("policy.reference_dtype 'bfloat16' needs distributed.mixed_precision: bf16 (the reference runs under the "
                                    "policy's autocast); without mixed precision use 'float32'.")
        c = self.curriculum
        if c.hard_weight <= 0:
            raise DeepGenInputError(f"curriculum.hard_weight must be > 0 (1: off), got {c.hard_weight}.")
        if not 0 < c.threshold <= 1:
            raise DeepGenInputError(f"curriculum.threshold must be in (0, 1] (a fraction of the total reward weight), got {c.threshold}.")
        if c.images_per_prompt < 1 or c.batch_size < 1:
            raise DeepGenInputError(f"curriculum.images_per_prompt and curriculum.batch_size must be >= 1, got {c.images_per_prompt} and {c.batch_size}.")
        if self.run.max_minutes < 0:
            raise DeepGenInputError(f"run.max_minutes must be >= 0 (0: no time budget), got {self.run.max_minutes}.")
        if self.model.compile:
            raise DeepGenInputError("model.compile applies to stages 1 and 2; the RL trainer does not compile the policy: set model.compile: false.")
        if self.model.cuda_graphs:
            raise DeepGenInputError("model.cuda_graphs applies to stages 1 and 2 (the RL trainer's rollouts use the pipeline's own graphs): set model.cuda_graphs: false.")

    @property
    def images_per_step(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.group_size

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, default=str)


_SECTIONS = {"model": ModelConfig, "rollout": RLRolloutConfig, "policy": PolicyConfig, "rewards": RLRewardsConfig, "curriculum": CurriculumConfig,
             "sft": DataConfig, "optim": OptimConfig, "distributed": DistributedConfig, "run": RLRunConfig}
_DEFAULTS = {"optim": lambda: dataclasses.asdict(rl_optim()), "model": lambda: {"gradient_checkpointing": True}}


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DeepGenInputError(f"unknown config keys {unknown} in {where}; valid keys: {sorted(known)}.")
    check_section(cls, data, where)
    return cls(**data)


def load_rl_config(recipe: str | Path | None, overrides: list[str] = ()) -> RLConfig:
    """Read a YAML recipe, apply `key.sub=value` overrides (values parsed as YAML), validate.

    A relative `rewards.datasets` path resolves against the recipe's folder (SFT sources: as in stages 1-2).
    """
    data = read_recipe(recipe, overrides, "train/recipes/rl*.yaml")
    base = Path(recipe).parent if recipe is not None else Path.cwd()
    datasets = data.get("rewards", {}).get("datasets")
    if datasets is not None and not Path(datasets).is_absolute():
        data["rewards"]["datasets"] = str(base / datasets)
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise DeepGenInputError(f"unknown config sections {unknown}; valid: {sorted(_SECTIONS)}.")
    check_section(RLConfig, data)
    return RLConfig(**data)
