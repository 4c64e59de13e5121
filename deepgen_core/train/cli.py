"""`deepgen train pretrain|sft|vae --config RECIPE [key=value ...]`, `deepgen train tiny-data DIR` and
`deepgen train deepgen-tiny --out DIR` (the whole DeepGen-Tiny recipe, `tiny_recipe.py`).

Launch on one process directly, or under `accelerate launch` / `torchrun` / `deepspeed` for several; the
recipe's `distributed.deepspeed_config` selects ZeRO (e.g. train/accelerate/zero2.json).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from ..errors import DeepGenInputError


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="training stages 1 (pretrain) and 2 (sft), the tiny VAE (vae)")
    stages = train.add_subparsers(dest="train_command", required=True)
    for stage, text in (("pretrain", "stage 1: alignment pre-training (bridge only)"), ("sft", "stage 2: joint SFT (bridge + DiT + VLM LoRA)")):
        p = add_recipe_parser(stages, stage, text, "train/recipes/*.yaml; fields of TrainConfig", "optim.lr=1e-5 checkpoint.output_dir=runs/x")
        # The `deepspeed` launcher appends --local_rank=N; the rank is taken from the environment it also sets.
        p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    text = "the tiny VAE (TAESD architecture, SD3 latent space; writes a ComfyUI-loadable vae.safetensors)"
    add_recipe_parser(stages, "vae", text, "train/recipes/tiny/vae.yaml; fields of VAEConfig", "max_steps=2000 optim.lr=1e-3 output_dir=runs/x").set_defaults(handler=run_vae)
    data = stages.add_parser("tiny-data", help="write the synthetic dataset the tiny recipes read")
    data.add_argument("out", nargs="?", default="runs/tiny-data")
    text = "train DeepGen-Tiny end to end: tiny-world data, VAE, stages 1-3, evaluation, fp16 package (one GPU, minutes)"
    tiny = stages.add_parser("deepgen-tiny", help=text, description=text)
    tiny.add_argument("--out", default="runs/deepgen-tiny", help="run folder (a re-run skips finished steps and resumes training)")
    tiny.add_argument("--recipes", default=None, help="recipe folder (default: train/recipes/tiny of this checkout)")
    tiny.add_argument("--from", dest="first", default="data", help="first step to run")
    tiny.add_argument("--until", dest="last", default="package", help="last step to run")
    tiny.add_argument("--device", default=None, help="device of the init/eval steps (default: cuda when available)")


def add_recipe_parser(stages: argparse._SubParsersAction, name: str, text: str, recipe: str, example: str) -> argparse.ArgumentParser:
    """A `train` subcommand driven by a YAML recipe: --config, key=value overrides, --print-config, --help-config."""
    p = stages.add_parser(name, help=text, description=text)
    p.add_argument("--config", help=f"YAML recipe ({recipe})")
    p.add_argument("overrides", nargs="*", help=f"config overrides like {example}")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-config", action="store_true", help="list every config field with its help and exit")
    return p


def run_train(args: argparse.Namespace) -> int:
    from .config import field_help, load_config

    if args.train_command == "deepgen-tiny":
        from .tiny_recipe import DEFAULT_RECIPES, TinyRun, run_tiny_recipe

        logging.getLogger("deepgen_core").setLevel(logging.INFO)
        records = run_tiny_recipe(TinyRun(args.out, args.recipes or DEFAULT_RECIPES, args.device), args.first, args.last)
        for step, record in records.items():
            print(f"{step}: {record['seconds']:.0f} s")
        return 0
    if args.train_command == "tiny-data":
        from .synthetic import write_synthetic_dataset

        for fmt, path in write_synthetic_dataset(args.out).items():
            print(f"{fmt}: {path}")
        return 0
    if args.help_config:
        for name, text in field_help():
            print(f"{name}: {text}")
        return 0
    require_recipe(args, f"train/recipes/{args.train_command}.yaml")
    config = load_config(args.train_command, args.config, args.overrides)
    if args.print_config:
        print(config.to_json())
        return 0
    from .trainer import Trainer

    logging.getLogger("deepgen_core").setLevel(logging.INFO)
    result = Trainer(config).run()
    logging.getLogger(__name__).info("finished at step %d; export: %s", result.step, result.export_dir)
    return 0


def require_recipe(args: argparse.Namespace, example: str) -> None:
    """A training run needs a recipe: every default alone trains nothing useful (`--print-config` and
    `--help-config` work without one)."""
    if args.config is None and not args.print_config:
        raise DeepGenInputError(f"`deepgen train {args.train_command}` needs --config RECIPE (e.g. --config {example}); "
                                "key=value overrides then adjust it. --print-config shows the defaults.")


def run_recipe_command(args: argparse.Namespace, config_cls: type, load: Callable, run: Callable) -> int:
    """`--help-config`, `--print-config` or a run, for the recipe-driven commands with one config class
    (`train vae`, `train rl`): `load(recipe, overrides) -> config`, `run(config)` trains."""
    from .config import field_help

    if args.help_config:
        for name, text in field_help(config_cls):
            print(f"{name}: {text}")
        return 0
    require_recipe(args, {"rl": "train/recipes/rl-tiny.yaml", "vae": "train/recipes/tiny/vae.yaml"}.get(args.train_command, "RECIPE.yaml"))
    config = load(args.config, args.overrides)
    if args.print_config:
        print(config.to_json())
        return 0
    logging.getLogger("deepgen_core").setLevel(logging.INFO)
    run(config)
    return 0


def run_vae(args: argparse.Namespace) -> int:
    from .vae import VAEConfig, load_vae_config, train_vae

    def run(config: VAEConfig) -> None:
        result = train_vae(config)
        logging.getLogger(__name__).info("finished at step %d: %s, held-out PSNR %.2f dB", result.step, result.vae_file, result.holdout_psnr)

    return run_recipe_command(args, VAEConfig, load_vae_config, run)
