"""The MR-GRPO trainer (reference notes §6): rollout -> rewards -> advantages -> policy update, per step.

Only the DiT trains; a frozen copy of the starting DiT is the KL reference (§6.1). With `policy.algorithm: nft`
(DiffusionNFT) the rollout ("old") policy is the trained DiT itself, or, with `policy.nft_old_decay` > 0 or
`reference_stepping`, a second frozen copy soft-updated towards it after every step, saved with the checkpoints when
it differs from the DiT. Every random draw of step s on rank r (prompts, rollout noise, SFT batch noise, NFT's forward
noise) is seeded from (seed, s, r), and the trained timestep subset from (seed, s), so a resumed run repeats the
uninterrupted one. Runs on one process, DDP or DeepSpeed ZeRO through
the shared accelerate setup, with the shared atomic checkpoints.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from ...errors import DeepGenInputError, TrainingError
from ...loading import DeepGenComponents
from ...rewards import build_reward
from ...rewards.base import Reward
from ...rewards.service import HTTPReward
from ..accel import build_accelerator, is_deepspeed, past_deadline
from ..checkpointing import CheckpointManager
from ..export import export_inference, import_checkpoint
from ..failures import explain_rank_failure
from ..metrics import MetricsLog
from ..modeling import DeepGenTrainModel, build_components
from ..optim import build_optimizer, build_scheduler
from ..trainer import derived_seed
from . import curriculum
from .advantages import compute_advantages
from .config import RLConfig
from .prompts import PromptSampler
from .reporting import reward_metrics, save_rollout_grid
from .rollout import RolloutSettings, ScoredRollout, rollout, score_rollout
from .sft import SFTAuxStream
from .update import choose_timesteps, num_trained_steps, policy_update

logger = logging.getLogger(__name__)


class PolicyModule(nn.Module):
    """The trainable DiT with the frozen encoder and VAE as one module, so DDP / DeepSpeed wrap a single forward.

    Called like the DiT (`module(latents, context, pooled, timestep).sample`), or with `sft_batch` / `sft_noise`
    for the auxiliary flow-matching loss through the stage-2 objective.
    """

    def __init__(self, inner: DeepGenTrainModel) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hidden_states=None, encoder_hidden_states=None, pooled_projections=None, timestep=None, sft_batch=None, sft_noise=None):
        if sft_batch is not None:
            return self.inner(sft_batch, sft_noise)["loss"]
        return self.inner.transformer(hidden_states, encoder_hidden_states, pooled_projections, timestep)


@dataclass
class RLResult:
    output_dir: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)


def build_rewards(names: list[str], options: dict[str, dict]) -> dict[str, Reward]:
    """In-process rewards by name, or HTTP clients where the options give a `url` (a `deepgen reward-server`)."""
    out = {}
    for name in names:
        opts = dict(options.get(name, {}))
        out[name] = HTTPReward(reward=name, **opts) if "url" in opts and name != "unifiedreward_think" else build_reward(name, **opts)
    return out


class RLTrainer:
    """Runs MR-GRPO from an `RLConfig`.

    Args:
        config: the validated config.
        rewards: optional reward objects by name (tests, custom rewards); default: built from the config.
        components: optional model components to start from (tests); default: built from `config.model`.
    """

    def __init__(self, config: RLConfig, rewards: dict[str, Reward] | None = None, components: DeepGenComponents | None = None) -> None:
        self.config, self._components = config, components
        self.out = Path(config.run.output_dir)
        self.prompts = PromptSampler.from_rewards_config(config.rewards.datasets, config.rewards.prompts, config.rewards.weights)
        self.rewards = rewards if rewards is not None else build_rewards(self.prompts.reward_names, config.rewards.options)
        missing = sorted(set(self.prompts.reward_names) - set(self.rewards))
        if missing:
            raise DeepGenInputError(f"the prompt datasets weight rewards {missing} that were not provided; pass them or drop their weights.")
        self.out.mkdir(parents=True, exist_ok=True)  # only once the prompts and rewards are known to work
        r = config.rollout
        self.settings = RolloutSettings(sampler=r.sampler, eta=r.eta, num_inference_steps=r.num_inference_steps, guidance_scale=r.guidance_scale,
                                        height=r.height, width=r.width, same_noise_per_group=r.same_noise_per_group)
        trained = num_trained_steps(r.num_inference_steps, config.policy.timestep_fraction, config.policy.include_last_step)
        micro = -(-config.images_per_step // config.policy.micro_batch_size)
        backwards = trained * micro + (config.policy.sft_coef > 0)
        # Backwards per optimizer update (DeepSpeed's accumulation count; our boundaries are explicit anyway) and
        # updates per RL step (the LR schedule counts optimizer updates, as the reference's does).
        self.backwards_per_update = 1 if config.policy.reference_stepping else backwards
        self.updates_per_step = backwards if config.policy.reference_stepping else 1
        log_with = ["tensorboard"] if config.run.tensorboard else None
        self.accelerator = build_accelerator(config.distributed, config.policy.micro_batch_size, self.backwards_per_update, config.optim.grad_clip, self.out, log_with)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.old: nn.Module | None = None  # DiffusionNFT's lagging rollout policy, if any (build_model)

    # ------------------------------------------------------------------------------------------- setup

    def build_model(self) -> tuple[PolicyModule, nn.Module]:
        """The policy (DiT trainable, everything else frozen) and the frozen reference DiT (a copy of the start);
        for DiffusionNFT with a lagging rollout policy (decay > 0, or reference_stepping, which updates the DiT within a
        step) also `self.old`, another frozen copy (fp32 like the trained weights)."""
        cfg = self.config
        inner = DeepGenTrainModel(self._components if self._components is not None else build_components(cfg.model))
        if cfg.model.init_checkpoint:
            import_checkpoint(inner, cfg.model.init_checkpoint)
        inner.requires_grad_(False)
        inner.transformer.requires_grad_(True)
        if cfg.model.gradient_checkpointing:
            inner.transformer.enable_gradient_checkpointing()
        ref = copy.deepcopy(inner.transformer).requires_grad_(False).eval()
        if cfg.policy.reference_dtype == "bfloat16":
            ref = ref.to(torch.bfloat16)
        inner.encoder.eval()
        inner.vae.eval()
        inner.transformer.train()
        device = self.accelerator.device
        p = cfg.policy
        if p.algorithm == "nft" and (p.nft_old_decay > 0 or p.reference_stepping):
            self.old = copy.deepcopy(inner.transformer).requires_grad_(False).eval().to(device)
        return PolicyModule(inner).to(device), ref.to(device)

    @torch.no_grad()
    def _update_old(self, model) -> None:
        """DiffusionNFT's soft update old <- d old + (1 - d) theta after an RL step (d = policy.nft_old_decay)."""
        decay = self.config.policy.nft_old_decay
        current = dict(self.accelerator.unwrap_model(model).inner.transformer.named_parameters())
        for name, param in self.old.named_parameters():
            src = current[name].detach().to(param.dtype)
            if decay == 0:
                param.copy_(src)
            else:
                param.lerp_(src, 1 - decay)

    def _old_extra(self) -> dict[str, dict[str, torch.Tensor]] | None:
        """The rollout policy's weights for a checkpoint, when they are not the trained DiT's (decay > 0)."""
        if self.old is None or self.config.policy.nft_old_decay == 0:
            return None
        return {"nft-old": {n: p for n, p in self.old.named_parameters()}}

    # ------------------------------------------------------------------------------------------- loop

    def run(self) -> RLResult:
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            (self.out / "config.json").write_text(cfg.to_json())
        logger.info("RL config:\n%s", cfg.to_json())
        policy, ref = self.build_model()
        optimizer = build_optimizer(policy, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.run.max_steps * self.updates_per_step)
        model, optimizer = acc.prepare(policy, optimizer)
        if cfg.run.tensorboard:
            acc.init_trackers("tensorboard", config={"config": cfg.to_json()})
        ckpt = CheckpointManager(self.out / "checkpoints", acc, cfg.run.keep_last)
        ckpt.remove_partial()
        if cfg.curriculum.hard_weight != 1.0:
            self._apply_curriculum(model)  # before resuming: difficulty is the starting model's
        step = self._resume(ckpt, model, optimizer, scheduler)
        if step and self.old is not None:
            self._restore_old(ckpt, model)
        sft = SFTAuxStream(cfg.sft, cfg.policy.sft_micro_batch_size, cfg.run.seed, self.rank, self.world) if cfg.policy.sft_coef > 0 else None
        metrics = MetricsLog(acc, self.out / "metrics.jsonl")
        metrics.truncate(step)  # steps after the checkpoint are replayed: their old records go
        result = RLResult(self.out, step)
        bar = tqdm(total=cfg.run.max_steps, initial=step, desc="rl", disable=not acc.is_main_process)
        deadline = time.monotonic() + 60.0 * cfg.run.max_minutes if cfg.run.max_minutes else None
        last = cfg.run.max_steps
        failed = 0  # consecutive steps in which no reward was scored
        while step < last:
            with explain_rank_failure(self.rank, self.world, step, ckpt.latest):
                values = self.train_step(step, model, ref, optimizer, scheduler, sft)
            failed = self._check_reward_signal(values, step, failed)
            step += 1
            if deadline is not None and step < last and past_deadline(acc, deadline, time.monotonic()):
                logger.warning("run.max_minutes (%g) reached at step %d of %d: saving and exporting; a re-run resumes from here", cfg.run.max_minutes, step, cfg.run.max_steps)
                last = step
            result.history.append(values)
            metrics.record_step(step, values)
            metrics.add(**values)
            bar.update(1)
            bar.set_postfix(reward=f"{values['reward']:.4f}", scored=f"{values['reward_scored']:.0%}", kl=f"{values['kl']:.2e}")
            if step % cfg.run.log_every == 0 or step == last:
                metrics.flush(step)
            if (cfg.run.save_every and step % cfg.run.save_every == 0) or step == last:
                ckpt.save(step, model, optimizer, scheduler, {"kind": "rl", "deepspeed": is_deepspeed(acc)}, extra=self._old_extra())
        bar.close()
        result.step = step
        if acc.is_main_process:
            dtype = torch.float32 if cfg.distributed.mixed_precision == "no" else torch.bfloat16
            export_inference(acc.unwrap_model(model).inner, self.out / "export", dtype)
        acc.wait_for_everyone()
        acc.end_training()
        return result

    def _check_reward_signal(self, values: dict[str, Any], step: int, failed: int) -> int:
        """Count consecutive steps without a single scored reward; stop the run at `run.max_failed_steps`."""
        acc = self.accelerator
        if acc.reduce(torch.tensor(values["reward_scored"], device=acc.device), "sum").item() > 0:  # every rank decides alike
            return 0
        failed += 1
        limit = self.config.run.max_failed_steps
        logger.warning("step %d: no reward was scored (%d consecutive step(s); the run stops at %s)", step + 1, failed, limit or "never")
        if limit and failed >= limit:
            raise TrainingError(
                f"no reward was scored in {failed} consecutive steps (last: step {step + 1}); the rewards' failures are in the log and "
                f"metrics.jsonl (reward_failures/<name>). Check the reward server (rewards.options ... url, token) and resume: the run "
                f"restarts from its last checkpoint in {self.out / 'checkpoints'}. run.max_failed_steps sets the limit (0: never stop).")
        return failed

    def _apply_curriculum(self, model) -> None:
        """Score every distinct prompt with the starting model (or read `curriculum.json`) and reweight the sampler."""
        cfg, acc = self.config, self.accelerator
        c = cfg.curriculum
        items = curriculum.distinct_prompts(self.prompts)
        settings = {"images_per_prompt": c.images_per_prompt, "seed": cfg.run.seed, "model": cfg.model.source,
                    "rollout": [cfg.rollout.height, cfg.rollout.width, cfg.rollout.num_inference_steps, cfg.rollout.guidance_scale]}
        path = self.out / curriculum.FILE_NAME
        scores = curriculum.load_scores(path, settings, items)
        if scores is None:
            started = time.perf_counter()
            pipe = acc.unwrap_model(model).inner.pipeline()
            with acc.autocast():
                mine = curriculum.score_prompts(pipe, items[self.rank :: self.world], self.rewards, self.settings, c.images_per_prompt,
                                                c.batch_size, derived_seed(cfg.run.seed, 0, self.rank, 4))
            scores = gather_object(mine) if self.world > 1 else mine
            if acc.is_main_process:
                curriculum.save_scores(path, scores, settings)
            acc.wait_for_everyone()
            logger.info("curriculum: scored %d distinct prompts in %.0f s", len(items), time.perf_counter() - started)
        self.prompts, summary, share = curriculum.reweighted(self.prompts, scores, c.threshold, c.hard_weight)
        logger.info("curriculum: hard prompts per dataset %s; drawn with weight %g: %.0f%% of draws", summary, c.hard_weight, 100 * share)

    def _resume_folder(self, ckpt: CheckpointManager) -> Path | None:
        how = self.config.run.resume
        return None if how == "never" else (ckpt.latest() if how == "auto" else Path(how))

    def _resume(self, ckpt: CheckpointManager, model, optimizer, scheduler) -> int:
        folder = self._resume_folder(ckpt)
        if folder is None:
            return 0
        return int(ckpt.load(folder, model, optimizer, scheduler)["step"])

    def _restore_old(self, ckpt: CheckpointManager, model) -> None:
        """DiffusionNFT's rollout policy after a resume: the trained DiT (decay 0) or the checkpoint's copy."""
        if self.config.policy.nft_old_decay == 0:
            self._update_old(model)
            return
        state = ckpt.load_extra(self._resume_folder(ckpt), "nft-old")
        with torch.no_grad():
            for name, param in self.old.named_parameters():
                param.copy_(state[name].to(param.device, param.dtype))

    # ------------------------------------------------------------------------------------------- one step

    def collect(self, step: int, model) -> ScoredRollout:
        """Rollout + rewards + advantages of `step` on this rank (advantages over all ranks unless per_rank)."""
        cfg, acc = self.config, self.accelerator
        draws = self.prompts.draw(cfg.rollout.prompts_per_step, torch.Generator().manual_seed(derived_seed(cfg.run.seed, step, self.rank, 0)))
        pipe = acc.unwrap_model(model).inner.pipeline()
        generator = torch.Generator().manual_seed(derived_seed(cfg.run.seed, step, self.rank, 1))
        with acc.autocast():
            ro = rollout(pipe, [d.prompt for d in draws], cfg.rollout.group_size, self.settings, generator, transformer=self.old)
        weights = [d.reward_weights for d in draws for _ in range(cfg.rollout.group_size)]
        scored = score_rollout(ro, self.rewards, weights, normalize=False)
        self._advantages(scored)
        return scored

    def _advantages(self, scored: ScoredRollout) -> None:
        p, acc = self.config.policy, self.accelerator
        rewards, weights = scored.rewards, scored.weights
        if p.advantage_scope == "global" and self.world > 1:
            rewards = acc.gather(rewards.to(acc.device)).cpu()
            weights = acc.gather(weights.to(acc.device)).cpu()
        adv = compute_advantages(rewards, weights, self.config.rollout.group_size, p.advantage_mode, p.advantage_clip)
        n = scored.rewards.shape[0]
        scored.advantages = adv[self.rank * n : (self.rank + 1) * n] if adv.shape[0] > n else adv
        scored.all_rewards, scored.all_weights = rewards, weights

    def train_step(self, step: int, model, ref: nn.Module, optimizer, scheduler, sft: SFTAuxStream | None) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        t0 = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        scored = self.collect(step, model)
        t1 = time.perf_counter()
        steps = choose_timesteps(cfg.rollout.num_inference_steps, cfg.policy.timestep_fraction, cfg.policy.include_last_step, random.Random(derived_seed(cfg.run.seed, step, 2)))
        backward, optimizer_step = self._stepping(model, optimizer, scheduler)
        sft_loss = None
        if sft is not None and step % cfg.policy.sft_every == 0:
            def sft_loss() -> torch.Tensor:
                batch, noise = sft.batch(step // cfg.policy.sft_every, acc.unwrap_model(model).inner)
                return model(sft_batch=batch, sft_noise=noise)
        nft = cfg.policy.algorithm == "nft"
        noise = torch.Generator().manual_seed(derived_seed(cfg.run.seed, step, self.rank, 5)) if nft else None
        with acc.autocast():
            values = policy_update(scored.rollout, scored.advantages.to(acc.device), model, ref, self.settings, cfg.policy, steps, backward, optimizer_step,
                                   sft_loss, old_model=self.old, noise_generator=noise)
        if self.old is not None:
            self._update_old(model)
        t2 = time.perf_counter()
        values = {k: acc.reduce(torch.tensor(v, device=acc.device), "mean").item() for k, v in values.items()}
        values.update(reward_metrics(scored))
        values.update({"lr": lr, "time/rollout": t1 - t0 - scored.reward_seconds, "time/reward": scored.reward_seconds, "time/update": t2 - t1})
        every = cfg.run.save_images_every
        if every and (step + 1) % every == 0:
            save_rollout_grid(scored, self.out / "samples" / f"step-{step + 1:08d}", self.rank)
        return values

    def _stepping(self, model, optimizer, scheduler):
        """(backward(loss, boundary), optimizer_step()) for DeepSpeed or plain/DDP runs."""
        acc, clip = self.accelerator, self.config.optim.grad_clip
        if is_deepspeed(acc):
            def backward(loss: torch.Tensor, boundary: bool) -> None:
                # The boundary is explicit so that DeepSpeed reduces and steps exactly at our update points.
                model.set_gradient_accumulation_boundary(boundary)
                model.backward(loss, scale_wrt_gas=False)

            def optimizer_step() -> float | None:
                model.step()
                scheduler.step()
                norm = model.get_global_grad_norm()
                return None if norm is None else float(norm)
            return backward, optimizer_step

        def backward(loss: torch.Tensor, boundary: bool) -> None:
            if boundary:
                acc.backward(loss)
            else:
                with acc.no_sync(model):
                    acc.backward(loss)

        def optimizer_step() -> float | None:
            norm = acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip) if clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            return None if norm is None else float(norm)
        return backward, optimizer_step
