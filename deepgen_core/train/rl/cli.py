"""`deepgen train rl --config train/recipes/rl*.yaml [key.sub=value ...]`.

Launch on one process directly, or under `accelerate launch` / `torchrun` for several; `distributed.deepspeed_config`
selects ZeRO (train/accelerate/zero2.json).
"""

from __future__ import annotations

import argparse
import logging

from ..cli import add_recipe_parser, run_recipe_command


def add_rl_parser(sub: argparse._SubParsersAction) -> None:
    """Add `rl` under the `train` subcommand (created by `deepgen_core.train.cli.add_train_parser`)."""
    train = sub.choices["train"]
    stages = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))
    text = "stage 3: MR-GRPO reinforcement learning of the DiT"
    p = add_recipe_parser(stages, "rl", text, "train/recipes/rl*.yaml; fields of RLConfig", "policy.kl_beta=1e-6 run.output_dir=runs/x")
    p.set_defaults(handler=run_rl)


def run_rl(args: argparse.Namespace) -> int:
    from .config import RLConfig, load_rl_config

    def run(config: RLConfig) -> None:
        from .trainer import RLTrainer

        result = RLTrainer(config).run()
        logging.getLogger(__name__).info("finished at step %d in %s", result.step, result.output_dir)

    return run_recipe_command(args, RLConfig, load_rl_config, run)
