"""The stage-1/2 training loop over the shared pieces (config, accelerate setup, data, checkpoints, export).

One optimizer step = `grad_accum` single-task micro-batches per process. The randomness of micro-batch i on
rank r (prompt dropout, timesteps, noise, VAE posterior noise, LoRA dropout) is seeded from (seed, i, r), and
the data plan is a pure function of i, so a run resumed from a checkpoint repeats the uninterrupted run's
losses exactly (bitwise on the CPU).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DeepGenInputError
from .accel import build_accelerator, is_deepspeed, past_deadline
from .checkpointing import CheckpointManager
from .config import TrainConfig
from .data import MixedDataset, build_dataloader, unpack_images
from .export import export_inference, export_reference_checkpoint, import_checkpoint
from .failures import explain_rank_failure
from .graphs import enable_training_graphs
from .latent_cache import LatentCache
from .metrics import MetricsLog, render_samples
from .modeling import (
    DeepGenTrainModel,
    build_components,
    compile_for_training,
    draw_step_noise,
    enable_gradient_checkpointing,
)
from .optim import build_optimizer, build_scheduler
from .sampler import MultiSourceBatchSampler
from .stages import setup_stage

logger = logging.getLogger(__name__)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence mixing: nearby inputs give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def apply_prompt_dropout(texts: list[str], probability: float, rng: random.Random) -> list[str]:
    """Replace each caption by '' with `probability` (text-to-image only; reference: 0.1, notes §5.1)."""
    return ["" if rng.random() < probability else t for t in texts]


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    export_dir: Path | None = None


class Trainer:
    """Runs one stage from a `TrainConfig`.

    Args:
        config: the validated stage config.
        dataset: optional dataset override (tests, benchmarks); default: `MixedDataset(config.data)`.
        model: optional pre-built model with the stage already applied (benchmarks), used as given (no
            gradient checkpointing or compile applied); default: built from `config.model` by `build_model`.
    """

    def __init__(self, config: TrainConfig, dataset: MixedDataset | None = None, model: DeepGenTrainModel | None = None) -> None:
        self.prebuilt = model
        self.config = config
        self.out = Path(config.checkpoint.output_dir)
        if dataset is None and not config.data.sources:  # before the output folder exists
            raise DeepGenInputError("data.sources is empty: list at least one dataset in the recipe, e.g. "
                                    "sources: [{path: data/blip3o.json, format: blip3o}] (see docs/training.md).")
        self.out.mkdir(parents=True, exist_ok=True)
        log_with = ["tensorboard"] if config.logging.tensorboard else None
        self.accelerator = build_accelerator(config.distributed, config.micro_batch_size, config.grad_accum, config.optim.grad_clip, self.out, log_with,
                                             autocast_cache=not config.model.cuda_graphs)
        self.dataset = dataset if dataset is not None else MixedDataset(config.data)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes

    # ------------------------------------------------------------------------------------------- setup

    def build_model(self) -> DeepGenTrainModel:
        cfg = self.config
        if self.prebuilt is not None:
            return self.prebuilt.to(self.accelerator.device).train()
        torch.manual_seed(cfg.seed)  # LoRA init; identical on every rank
        model = DeepGenTrainModel(build_components(cfg.model))
        self.trainable_counts = setup_stage(model, cfg)
        if cfg.model.init_checkpoint:
            import_checkpoint(model, cfg.model.init_checkpoint, lora_alpha=cfg.lora.alpha)
        if cfg.model.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if cfg.model.compile:  # after the LoRA, the import and the checkpointing; before DDP / DeepSpeed wrap it
            compile_for_training(model, cfg.model.compile, capturable=cfg.model.cuda_graphs, backend=cfg.model.compile_backend)
        model = model.to(self.accelerator.device).train()
        if cfg.model.cuda_graphs:
            if self.accelerator.device.type != "cuda" or self.world > 1:
                raise DeepGenInputError(
                    f"model.cuda_graphs needs one process on one CUDA GPU; this run has {self.world} process(es) on "
                    f"{self.accelerator.device.type}. Set model.cuda_graphs: false (multi-GPU runs: DDP or DeepSpeed without it).")
            self.graphs = enable_training_graphs(model)
            # Gradients stay allocated and are zeroed in place: a graphed backward hands out its static gradient
            # buffers, which a `None` .grad would adopt and the next micro-batch's replay overwrite.
            for p in model.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
        return model

    def _batches(self, start: int, model) -> Iterator[dict[str, Any]]:
        sources, data = self.dataset.sources, self.config.data
        sampler = MultiSourceBatchSampler(
            [len(s) for s in sources], [s.source.task for s in sources], [s.source.weight for s in sources],
            data.task_cycle, self.config.micro_batch_size, self.rank, self.world, self.config.seed, start=start)
        if data.cache_latents:
            cache = LatentCache(self.dataset, self.accelerator.unwrap_model(model), self.accelerator.autocast,
                                self.config.micro_batch_size, data.num_workers)
            return cache.batches(sampler.batches())
        return map(unpack_images, build_dataloader(self.dataset, sampler.batches(), data.num_workers))

    # ------------------------------------------------------------------------------------------- loop

    def run(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            (self.out / "config.json").write_text(cfg.to_json())
        logger.info("training config:\n%s", cfg.to_json())
        model = self.build_model()
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.max_steps)
        model, optimizer = acc.prepare(model, optimizer)
        if cfg.logging.tensorboard:
            acc.init_trackers("tensorboard", config={k: str(v) for k, v in cfg.to_dict().items()})
        ckpt = CheckpointManager(self.out / "checkpoints", acc, cfg.checkpoint.keep_last)
        ckpt.remove_partial()
        state = self._resume(ckpt, model, optimizer, scheduler)
        step, consumed = state.get("step", 0), state.get("consumed_micro_batches", 0)
        batches = self._batches(consumed, model)
        metrics = MetricsLog(acc, self.out / "metrics.jsonl")
        metrics.truncate(step)  # steps after the checkpoint are replayed: their old records go
        result = TrainResult(self.out, step)
        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"{cfg.stage}", disable=not (acc.is_main_process and cfg.logging.progress_bar))
        deadline = time.monotonic() + 60.0 * cfg.max_minutes if cfg.max_minutes else None
        last = cfg.max_steps
        while step < last:
            started = time.perf_counter()
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            with explain_rank_failure(self.rank, self.world, step, ckpt.latest):
                values = self._optimizer_step(model, optimizer, batches)
            scheduler.step()
            step += 1
            if deadline is not None and step < last and self._out_of_time(deadline):
                logger.warning("max_minutes (%g) reached at step %d of %d: saving and exporting; a re-run resumes from here", cfg.max_minutes, step, cfg.max_steps)
                last = step
            consumed += cfg.grad_accum
            values.update(lr=lr, samples_per_s=cfg.micro_batch_size * cfg.grad_accum * self.world / (time.perf_counter() - started))
            result.losses.append(values["loss"])
            metrics.record_step(step, values)
            metrics.add(**{k: v for k, v in values.items() if isinstance(v, float)})
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", sps=f"{values['samples_per_s']:.1f}")
            if step % cfg.logging.log_every == 0 or step == last:
                metrics.flush(step)
            self._periodic(step, model, optimizer, scheduler, ckpt, consumed, final=step == last)
        bar.close()
        result.step = step
        result.export_dir = self._finish(model)
        acc.end_training()
        return result

    def _optimizer_step(self, model, optimizer, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        unwrapped = acc.unwrap_model(model)
        losses, tasks, skipped, grad_norm = [], {}, 0, None
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            seed = derived_seed(cfg.seed, batch["index"], self.rank)
            dropout = cfg.data.prompt_dropout if batch["task"] == "text2image" else cfg.data.edit_prompt_dropout
            if dropout:
                batch["texts"] = apply_prompt_dropout(batch["texts"], dropout, random.Random(seed))
            noise = draw_step_noise(unwrapped, batch, torch.Generator().manual_seed(seed))
            torch.manual_seed(seed)  # LoRA dropout draws from the global generator
            with acc.accumulate(model):
                loss = model(batch, noise)["loss"]
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.grad_clip > 0:
                    grad_norm = acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=not cfg.model.cuda_graphs)  # see build_model
            losses.append(loss.detach().float())
            tasks.setdefault(batch["task"], []).append(loss.detach().float())
            skipped += batch["num_skipped"]
            # Free this micro-batch's autograd graph before the next forward: a CUDA graph capture there (model.
            # cuda_graphs) must not meet the gradient-accumulation nodes of a graph still alive on another stream.
            del loss
        values = {"loss": acc.reduce(torch.stack(losses).mean(), "mean").item(), "data/skipped": float(skipped)}
        for task, task_losses in tasks.items():
            values[f"loss/{task}"] = torch.stack(task_losses).mean().item()
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        if torch.cuda.is_available():
            values["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return values

    # ------------------------------------------------------------------------------------------- side tasks

    def _resume(self, ckpt: CheckpointManager, model, optimizer, scheduler) -> dict[str, Any]:
        how = self.config.checkpoint.resume
        if how == "never":
            return {}
        folder = ckpt.latest() if how == "auto" else Path(how)
        if folder is None:
            return {}
        state = ckpt.load(folder, model, optimizer, scheduler)
        if state.get("world_size") != self.world or state.get("micro_batch_size", self.config.micro_batch_size) != self.config.micro_batch_size:
            logger.warning("resuming with a different world size or batch size: the data order will differ from the original run")
        return state

    def _out_of_time(self, deadline: float) -> bool:
        """Past the wall-clock budget on any rank (every rank then stops at the same step)."""
        return past_deadline(self.accelerator, deadline, time.monotonic())

    def _periodic(self, step: int, model, optimizer, scheduler, ckpt: CheckpointManager, consumed: int, final: bool = False) -> None:
        cfg = self.config
        every = cfg.checkpoint.save_every
        if (every and step % every == 0) or (final and cfg.checkpoint.save_at_end):
            ckpt.save(step, model, optimizer, scheduler, {"consumed_micro_batches": consumed, "stage": cfg.stage,
                                                          "micro_batch_size": cfg.micro_batch_size, "deepspeed": is_deepspeed(self.accelerator)})
        log = cfg.logging
        if log.sample_every and step % log.sample_every == 0 and self.accelerator.is_main_process:
            # Compiled training renders eagerly: inference graphs would join the training ones of the same block code
            # (mask / no mask x three DiT block kinds) past dynamo's recompile limit of 8, a hard error with fullgraph.
            eager = torch.compiler.set_stance("force_eager") if cfg.model.compile else contextlib.nullcontext()
            with eager:
                render_samples(self.accelerator.unwrap_model(model), log.sample_prompts, log.sample_steps, log.sample_size, cfg.seed,
                               self.out / "samples", step, self.accelerator)
        self.accelerator.wait_for_everyone()

    def _finish(self, model) -> Path | None:
        cfg, acc = self.config, self.accelerator
        if not cfg.checkpoint.export_at_end:
            return None
        export_dir = self.out / "export"
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(model)
            dtype = torch.float32 if cfg.distributed.mixed_precision == "no" else torch.bfloat16
            export_inference(unwrapped, export_dir, dtype)
            export_reference_checkpoint(unwrapped, self.out / "export-reference" / "deepgen_checkpoint.safetensors", dtype)
            if cfg.train_vlm_text:
                logger.warning("train_vlm_text: the reference-layout export holds no VLM base weights; use %s", export_dir)
        acc.wait_for_everyone()
        return export_dir
