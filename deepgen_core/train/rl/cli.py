"""`deepgen train rl --config train/recipes/rl*.yaml [key.sub=value ...]`.

Launch on one process directly, or under `accelerate launch` / `torchrun` for several; `distributed.deepspeed_config`
selects ZeRO (train/accelerate/zero2.json).
"""

from __future__ import annotations

import argparse
import logging


def add_rl_parser(sub: argparse._SubParsersAction) -> None:
    """Add `rl` under the `train` subcommand (created by `deepgen_core.train.cli.add_train_parser`)."""
    train = sub.choices["train"]
    stages = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))
    text = "stage 3: MR-GRPO reinforcement learning of the DiT"
    p = stages.add_parser("rl", help=text, description=text)
    p.add_argument("--config", help="YAML recipe (train/recipes/rl*.yaml); fields of RLConfig")
    p.add_argument("overrides", nargs="*", help="config overrides like policy.kl_beta=1e-6 run.output_dir=runs/x")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-config", action="store_true", help="list every config field with its help and exit")
    p.set_defaults(handler=run_rl)


def run_rl(args: argparse.Namespace) -> int:
    from ..cli import run_recipe_command
    from .config import RLConfig, load_rl_config

    def run(config: RLConfig) -> None:
        from .trainer import RLTrainer

        result = RLTrainer(config).run()
        logging.getLogger(__name__).info("finished at step %d in %s", result.step, result.output_dir)

    return run_recipe_command(args, RLConfig, load_rl_config, run)
