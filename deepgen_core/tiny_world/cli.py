"""`deepgen tiny-world write|eval`: write the tiny-world training data, or score a model on the held-out split."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_tiny_world_parser(subparsers) -> None:
    """Register `deepgen tiny-world {write,eval}` on an argparse subparsers object."""
    p = subparsers.add_parser("tiny-world", help="DeepGen-Tiny's procedural world: write training data, evaluate a model")
    sub = p.add_subparsers(dest="tiny_world_command", required=True)

    w = sub.add_parser("write", help="write training images + t2i.json / edit.json / text.json (+ RL prompts)")
    w.add_argument("out", help="output folder")
    w.add_argument("--n-t2i", type=int, default=20000, help="text-to-image samples")
    w.add_argument("--n-edit", type=int, default=10000, help="edit triplets")
    w.add_argument("--n-text", type=int, default=5000, help="text-rendering samples")
    w.add_argument("--n-rl-text", type=int, default=0, help="also write this many RL text prompts (ocr reward)")
    w.add_argument("--n-rl-shapes", type=int, default=0, help="also write this many RL shape prompts (shape_world reward)")
    w.add_argument("--two-object-fraction", type=float, default=0.2, help="share of text-to-image scenes with two objects")
    w.add_argument("--size", type=int, default=128, help="image side in px")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--workers", type=int, default=0, help="rendering processes (0: this process)")
    w.set_defaults(handler=run_write)

    e = sub.add_parser("eval", help="acceptance metrics on the held-out split (CPU by default)")
    e.add_argument("--model", default=None, help="DeepGen model folder (default: the embedded tiny model)")
    e.add_argument("--n", type=int, default=64, help="samples per task (text: half of it)")
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--cfg", type=float, default=4.0)
    e.add_argument("--batch", type=int, default=8)
    e.add_argument("--size", type=int, default=128)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu")
    e.add_argument("--tasks", default="t2i,edit,text", help="comma-separated subset of t2i, edit, text")
    e.add_argument("--json", default=None, help="also write the results to this JSON file")
    e.set_defaults(handler=run_eval)


def run_write(args: argparse.Namespace) -> int:
    from .dataset import write_dataset, write_rl_prompts

    paths = write_dataset(args.out, args.n_t2i, args.n_edit, args.n_text, seed=args.seed, size=args.size,
                          workers=args.workers, two_object_fraction=args.two_object_fraction)
    if args.n_rl_text or args.n_rl_shapes:
        paths["rl"] = write_rl_prompts(args.out, args.n_rl_text, args.n_rl_shapes, seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from ..pipeline import DeepGenPipeline
    from .evaluate import evaluate_all, format_table

    if args.model is None:
        from ..presets import deepgen_tiny_dir

        logger.info("no --model given: evaluating the embedded DeepGen-Tiny")
    model = args.model or deepgen_tiny_dir()
    pipe = DeepGenPipeline.from_pretrained(model, torch_dtype=torch.float32, device=args.device)
    tasks = {t.strip() for t in args.tasks.split(",")}
    counts = {"t2i": args.n, "edit": args.n, "text": max(args.n // 2, 1)}
    results = evaluate_all(pipe, *(counts[t] if t in tasks else 0 for t in ("t2i", "edit", "text")), seed=args.seed,
                           steps=args.steps, cfg=args.cfg, batch=args.batch, size=args.size)
    print(format_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0
