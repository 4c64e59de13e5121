"""Stage-3 probe on the CPU: does MR-GRPO raise the OCR reward of a few prompts DeepGen-Tiny half gets wrong?

A quick check of an RL setting before spending device time on it: the shipped `train/recipes/tiny/stage3.yaml`
with inline prompts (OCR reward only, one worker), fp32 on the CPU, printing every step's mean reward, KL and
gradient norm. `--lr 0` is the control (rewards as the start model draws them, without updates):

    python3 benchmarks/probes/tiny_rl_probe.py --lr 1e-5 --kl-beta 0 --steps 30
    python3 benchmarks/probes/tiny_rl_probe.py --lr 0 --steps 30

About 11 s a step on 2 cores with the default 2 prompts x 8 images.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from deepgen_core.presets import deepgen_tiny_dir
from deepgen_core.train.rl.config import load_rl_config
from deepgen_core.train.rl.trainer import RLTrainer

RECIPE = Path(__file__).resolve().parents[2] / "train" / "recipes" / "tiny" / "stage3.yaml"
# Training-split (word, colour, background) combinations earlier DeepGen-Tiny models misread in some rollouts.
PROMPTS = ('the word "EGG" in white letters on a blue background', '"MAP" written in white on a blue background')


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="converted DeepGen folder (default: the embedded DeepGen-Tiny)")
    parser.add_argument("--prompt", action="append", help="prompt with a quoted word (repeatable; default: two hard ones)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--kl-beta", type=float, default=None, help="policy.kl_beta (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="more key=value overrides of stage3.yaml")
    parser.add_argument("--out", default=None, help="keep the run folder here (its export/ is the trained model; default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = list(args.prompt or PROMPTS)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        overrides = [
            f"model.source={args.model or deepgen_tiny_dir()}", "rewards.datasets=null", f"rewards.prompts={json.dumps(prompts)}",
            "rewards.weights={ocr: 1.0}", "rewards.options.ocr.workers=1", f"rollout.prompts_per_step={len(prompts)}",
            f"rollout.group_size={args.group}", f"policy.micro_batch_size={len(prompts) * args.group}", f"optim.lr={args.lr}",
            "optim.warmup_steps=0", f"run.max_steps={args.steps}", f"run.output_dir={out}", "run.save_every=0",
            "run.save_images_every=0", "distributed.mixed_precision=no", "distributed.cpu=true",
            "curriculum.hard_weight=1",  # the probe's prompts are drawn evenly, as chosen (the recipe reweights hard ones)
            *args.set,
        ]
        if args.kl_beta is not None:
            overrides.append(f"policy.kl_beta={args.kl_beta}")
        history = RLTrainer(load_rl_config(RECIPE, overrides)).run().history
    for step, h in enumerate(history):
        print(f"step {step:3d}  reward {h['reward']:.3f}  kl {h['kl']:.3g}  grad_norm {h.get('grad_norm', 0.0):.3g}")
    rewards = [h["reward"] for h in history]
    half = len(rewards) // 2
    print(f"mean reward: first half {statistics.mean(rewards[:half]):.3f}, second half {statistics.mean(rewards[half:]):.3f}; "
          f"steps with every image right: {sum(r == 1.0 for r in rewards)} of {len(rewards)}")


if __name__ == "__main__":
    main()
