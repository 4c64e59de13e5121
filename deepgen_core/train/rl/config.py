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

import yaml

from ...errors import DeepGenInputError
from ...sampling import check_sde_sampler
from .advantages import ADVANTAGES


def _help(default: Any, text: str, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class RLModelConfig:
    source: str = _help("tiny", "'tiny' (embedded toy model with random weights) or a converted DeepGen folder / DeepGen checkpoint (the SFT model)")
    vlm: str | None = _help(None, "Qwen2.5-VL-3B-Instruct folder (release checkpoints only)")
    diffusion: str | None = _help(None, "UniPic2-SD3.5M-Kontext folder (release checkpoints only)")
    tiny_seed: int = _help(0, "seed of the random weights of source='tiny'")
    gradient_checkpointing: bool = _help(True, "recompute DiT activations in backward (reference: on)")


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


@dataclass
class PolicyConfig:
    timestep_fraction: float = _help(0.6, "fraction of the denoising steps trained per rollout (random subset, sorted)")
    include_last_step: bool = _help(False, "allow the last step (deterministic for CPS) in the subset")
    clip_range: float = _help(1e-4, "PPO ratio clip c")
    kl_beta: float = _help(5e-7, "weight of the v-space KL to the frozen starting DiT")
    micro_batch_size: int = _help(32, "images per policy forward/backward")
    advantage_mode: str = _help("gdpo", f"one of {sorted(ADVANTAGES)}")
    advantage_clip: float = _help(5.0, "clamp advantages to [-clip, clip]")
    advantage_scope: str = _help("global", "'global': normalise advantages over all ranks' images (correct); 'per_rank': each GPU on its own batch (reference, §9.13)")
    reference_stepping: bool = _help(False, "reproduce the reference's optimizer step after EVERY micro-batch backward and after the SFT backward (§6.9, §9.12); default: one step per rollout batch")
    sft_coef: float = _help(1e-4, "lambda of the convex mix (1 - lambda) GRPO + lambda SFT (0 disables the auxiliary loss)")
    sft_every: int = _help(1, "auxiliary SFT loss every N steps")
    sft_data: str | None = _help(None, "JSONL of {'image': path, 'caption': str} (paths relative to the file) for the auxiliary SFT loss")
    sft_micro_batch_size: int = _help(32, "images per auxiliary SFT batch")
    sft_prompt_dropout: float = _help(0.1, "caption dropout of the SFT loss (stage-2 objective)")


@dataclass
class RLRewardsConfig:
    datasets: str | None = _help(None, "prompt/reward-weight YAML (see deepgen_core.rewards.weights); required unless `prompts` is given")
    prompts: list[str] = _help(None, "inline prompts (used with `weights` when no datasets YAML is given)", factory=list)
    weights: dict[str, float] = _help(None, "reward -> weight for inline prompts", factory=dict)
    options: dict[str, dict] = _help(None, "reward -> constructor options, e.g. {clip_sim: {path: /models/clip}}; {url: ...} makes it an HTTP client of `deepgen reward-server`", factory=dict)


@dataclass
class RLOptimConfig:
    lr: float = _help(2e-6, "learning rate")
    betas: tuple[float, float] = _help((0.9, 0.999), "AdamW betas (HF defaults, as DeepSpeed 'auto')")
    weight_decay: float = _help(0.0, "AdamW weight decay")
    eps: float = _help(1e-8, "AdamW epsilon")
    grad_clip: float = _help(1.0, "max gradient norm (0 disables)")
    warmup_steps: int = _help(20, "linear warm-up (constant_with_warmup), in optimizer steps")

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)


@dataclass
class RLRunConfig:
    output_dir: str = _help("runs/deepgen-rl", "run folder: checkpoints/, samples/, metrics.jsonl, tensorboard/")
    max_steps: int = _help(1000, "RL steps (one rollout batch each)")
    seed: int = _help(42, "seed of prompts, noise and timestep subsets (derived per step and rank, so resumes reproduce)")
    save_every: int = _help(50, "checkpoint every N steps (0: only at the end)")
    keep_last: int = _help(0, "keep the N newest checkpoints (0: all, reference)")
    resume: str = _help("auto", "'auto' (latest complete checkpoint), 'never', or a checkpoint folder")
    log_every: int = _help(1, "average and log metrics every N steps")
    save_images_every: int = _help(1, "save the first group's rollout grid with rewards every N steps (0: never)")
    deepspeed_config: str | None = _help(None, "DeepSpeed JSON (e.g. train/accelerate/zero2.json); None: DDP / one process")
    mixed_precision: str = _help("bf16", "'bf16' or 'no'")
    tensorboard: bool = _help(True, "TensorBoard scalars under output_dir/tensorboard")


@dataclass
class RLConfig:
    model: RLModelConfig = _help(None, "policy model", factory=RLModelConfig)
    rollout: RLRolloutConfig = _help(None, "rollouts", factory=RLRolloutConfig)
    policy: PolicyConfig = _help(None, "policy objective", factory=PolicyConfig)
    rewards: RLRewardsConfig = _help(None, "rewards and prompts", factory=RLRewardsConfig)
    optim: RLOptimConfig = _help(None, "optimizer", factory=RLOptimConfig)
    run: RLRunConfig = _help(None, "run, checkpoints, logging", factory=RLRunConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                setattr(self, f.name, _from_dict(_SECTIONS[f.name], value, f.name))
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
        if p.advantage_mode not in ADVANTAGES:
            raise DeepGenInputError(f"policy.advantage_mode must be one of {sorted(ADVANTAGES)}, got {p.advantage_mode!r}.")
        if p.advantage_scope not in ("global", "per_rank"):
            raise DeepGenInputError(f"policy.advantage_scope must be 'global' or 'per_rank', got {p.advantage_scope!r}.")
        if not 0 <= p.sft_coef < 1:
            raise DeepGenInputError(f"policy.sft_coef must be in [0, 1), got {p.sft_coef}.")
        if p.sft_coef > 0 and p.sft_data is None:
            raise DeepGenInputError("policy.sft_coef > 0 needs policy.sft_data (a JSONL of image/caption pairs); or set policy.sft_coef: 0.")
        if self.rewards.datasets is None and not (self.rewards.prompts and self.rewards.weights):
            raise DeepGenInputError("give rewards.datasets (a prompt/reward YAML) or both rewards.prompts and rewards.weights.")
        if self.run.mixed_precision not in ("bf16", "no"):
            raise DeepGenInputError(f"run.mixed_precision must be 'bf16' or 'no', got {self.run.mixed_precision!r}.")

    @property
    def images_per_step(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.group_size

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, default=str)


_SECTIONS = {"model": RLModelConfig, "rollout": RLRolloutConfig, "policy": PolicyConfig, "rewards": RLRewardsConfig,
             "optim": RLOptimConfig, "run": RLRunConfig}


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DeepGenInputError(f"unknown config keys {unknown} in {where}; valid keys: {sorted(known)}.")
    return cls(**data)


def _set_override(tree: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise DeepGenInputError(f"override {item!r} must look like key.sub=value (e.g. optim.lr=1e-5).")
    key, value = item.split("=", 1)
    *parents, leaf = key.strip().split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = yaml.safe_load(value)


def load_rl_config(recipe: str | Path | None, overrides: list[str] = ()) -> RLConfig:
    """Read a YAML recipe, apply `key.sub=value` overrides (values parsed as YAML), validate.

    Relative paths in `rewards.datasets` and `policy.sft_data` resolve against the recipe's folder.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise DeepGenInputError(f"recipe {str(path)!r} does not exist; see train/recipes/rl*.yaml.")
        data = yaml.safe_load(path.read_text()) or {}
        base = path.parent
    for item in overrides:
        _set_override(data, item)
    for section, key in (("rewards", "datasets"), ("policy", "sft_data")):
        value = data.get(section, {}).get(key)
        if value is not None and not Path(value).is_absolute():
            data[section][key] = str(base / value)
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise DeepGenInputError(f"unknown config sections {unknown}; valid: {sorted(_SECTIONS)}.")
    return RLConfig(**data)
