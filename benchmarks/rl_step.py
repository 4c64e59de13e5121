"""Real-size (random weights) MR-GRPO step on one GPU: rollout of 8 images at 512^2 with 50 SDE steps, rewards,
then the policy update (30 of 50 steps, micro-batch 8, v-KL to the frozen DiT), through `RLTrainer.train_step`.

Not a test. Prints seconds per phase (rollout / reward / update) and peak GPU memory after a short warm-up step.
Usage: python benchmarks/rl_step.py [--steps 50] [--images 8] [--out result.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from real_size_smoke import real_size_components  # noqa: E402

from deepgen_core.loading import cast  # noqa: E402
from deepgen_core.rewards import BrightnessReward  # noqa: E402
from deepgen_core.train.rl.config import RLConfig  # noqa: E402
from deepgen_core.train.rl.trainer import RLTrainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    components = real_size_components("cuda", torch.bfloat16)
    components.transformer = cast(components.transformer, torch.float32)  # fp32 master weights, bf16 autocast
    build_s = time.perf_counter() - t0
    config = RLConfig(
        model={"source": "tiny", "gradient_checkpointing": True},
        rollout={"group_size": args.images, "prompts_per_step": 1, "num_inference_steps": 2, "height": 512, "width": 512},
        policy={"micro_batch_size": args.images, "sft_coef": 0.0},
        rewards={"prompts": ["a photograph of a red fox reading a newspaper on a park bench, morning light"], "weights": {"brightness": 1.0}},
        distributed={"mixed_precision": "bf16"},
        run={"output_dir": tempfile.mkdtemp(), "max_steps": 2, "save_every": 0, "save_images_every": 0, "tensorboard": False},
    )
    trainer = RLTrainer(config, rewards={"brightness": BrightnessReward()}, components=components)
    policy, ref = trainer.build_model()
    from deepgen_core.train.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(policy, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, 10)
    model, optimizer = trainer.accelerator.prepare(policy, optimizer)
    warm = trainer.train_step(0, model, ref, optimizer, scheduler, None)  # 2 denoising steps: kernels, allocator
    config.rollout.num_inference_steps = args.steps
    trainer.settings = dataclasses.replace(trainer.settings, num_inference_steps=args.steps)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    values = trainer.train_step(1, model, ref, optimizer, scheduler, None)
    torch.cuda.synchronize()
    result = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "images": args.images, "size": 512, "denoising_steps": args.steps,
        "trained_steps": int(args.steps * config.policy.timestep_fraction), "build_s": round(build_s, 1), "warmup_step_s": round(sum(warm[k] for k in ("time/rollout", "time/reward", "time/update")), 1),
        "step_s": round(time.perf_counter() - start, 2), "rollout_s": round(values["time/rollout"], 2), "reward_s": round(values["time/reward"], 3),
        "update_s": round(values["time/update"], 2), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "kl": values["kl"], "loss_policy": values["loss/policy"], "ratio_dev": values["ratio_dev"], "clip_frac": values["clip_frac"],
        "grad_norm": values.get("grad_norm"), "optimizer_updates": values["optimizer_updates"],
        "dit_params": sum(p.numel() for p in components.transformer.parameters()),
    }
    print(json.dumps(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
