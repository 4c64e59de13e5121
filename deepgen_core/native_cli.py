"""`deepgen extract-dit-lora`: a fine-tuned DiT (e.g. the export of `deepgen train sft`) as a LoRA file for
ComfyUI's LoRA loaders. The parser imports nothing heavy; the command imports `native_dit` when it runs."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def _named_dit(name: str):
    from .native_dit import read_dit

    if name == "tiny":
        from .presets import deepgen_tiny_dir

        return read_dit(deepgen_tiny_dir())
    return read_dit(name)


def _extract_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .errors import DeepGenInputError
    from .loading import atomic_save_safetensors
    from .native_dit import extract_dit_lora

    base, tuned = _named_dit(args.base), _named_dit(args.tuned)
    lora = extract_dit_lora(base.state, tuned.state, rank=args.rank, dtype=getattr(torch, args.dtype))
    if not lora:
        raise DeepGenInputError(f"{args.tuned} has the same DiT weights as {args.base}: nothing to extract (was the DiT trained?).")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(lora, out, {"deepgen_format": "1", "component": "dit_lora", "rank": str(args.rank)})
    logger.info("wrote %d LoRA tensors to %s", len(lora), out)
    return 0


def add_lora_parser(sub) -> None:
    """Register `extract-dit-lora` on the `deepgen` subparsers."""
    p = sub.add_parser("extract-dit-lora", help="write the difference between a fine-tuned DiT and its base as a LoRA file ComfyUI's LoraLoaderModelOnly loads")
    p.add_argument("--base", required=True, help="the DiT training started from: 'tiny' (embedded DeepGen-Tiny), a converted folder or DiT file, or a diffusers transformer/ folder")
    p.add_argument("--tuned", required=True, help="the fine-tuned DiT, e.g. the export/ folder of `deepgen train sft`")
    p.add_argument("--out", required=True, help="output .safetensors (put it in ComfyUI's models/loras)")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank: larger follows the fine-tune more closely in a larger file")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16", help="dtype of the stored tensors")
    p.set_defaults(handler=_extract_command)
