"""`deepgen eval BENCH --data PATH --out DIR`: one command for every benchmark; run it under `accelerate launch -m
deepgen_core.cli eval ...` (or torchrun) to shard the prompts over GPUs and nodes."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
NAMES = "geneval, dpg, unigenbench, wise, corebench, imgedit, gedit, rise, uniredit, cvtg"
logger = logging.getLogger(__name__)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    text = "generate a benchmark's images in the layout its official scorer reads (multi-GPU with accelerate launch, resumable)"
    p = sub.add_parser("eval", help=text, description=f"{text}. Benchmarks: {NAMES}. Defaults are the paper's settings; see docs/eval.md.")
    p.add_argument("benchmark", help=f"one of: {NAMES}")
    p.add_argument("--data", required=True, type=Path, help="the benchmark's published prompt/data file or folder (docs/eval.md lists each)")
    p.add_argument("--out", required=True, type=Path, help="output folder (one per benchmark and setting; a rerun resumes it)")
    p.add_argument("--image-root", type=Path, default=None, help="edit benchmarks: folder the source image paths are relative to (default: the data file's folder)")
    p.add_argument("--model", help="converted DeepGen folder/file or a DeepGen checkpoint (default: the embedded DeepGen-Tiny)")
    p.add_argument("--vlm", help="Qwen2.5-VL-3B-Instruct folder (with a release checkpoint)")
    p.add_argument("--diffusion", help="UniPic2-SD3.5M-Kontext folder (with a release checkpoint)")
    p.add_argument("--config", help="DeepGen config JSON (default: beside the checkpoint, else inferred)")
    g = p.add_argument_group("generation (default: the paper's evaluation settings)")
    g.add_argument("--height", type=int, default=None, help="default: the model's (512; DeepGen-Tiny 128)")
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--steps", type=int, default=None, help="default 50 (25 on DeepGen-Tiny)")
    g.add_argument("--cfg", type=float, default=None, help="CFG scale (default 4.0; dpg 7.5 as the released script)")
    g.add_argument("--negative-prompt", default=None, help="default: '' for text-to-image; the model's quality negative for edits")
    g.add_argument("--seed", type=int, default=42, help="base seed: image j of sample i uses seed + 1000 i + j")
    g.add_argument("--images-per-prompt", type=int, default=None, help="default: 4 for geneval, dpg, unigenbench, corebench; else 1")
    g.add_argument("--batch-size", type=int, default=None, help="samples per model call (default 16; edits 4). Changes the images slightly (padding), like the reference")
    g.add_argument("--shift", type=float, default=None, help="scheduler shift override (default: the model's, 3.0)")
    g.add_argument("--limit", type=int, default=None, help="only the first N samples (a smoke run)")
    p.add_argument("--device", default=None, help="default: this process's accelerator device (cuda:LOCAL_RANK), else cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--score", action="store_true", help="after generating, compute the scores that need nothing extra (cvtg: word accuracy, NED) into scores.json")
    p.add_argument("--clip", type=Path, default=None, help="local CLIP folder (openai/clip-vit-large-patch14): also report CLIPScore (text-to-image benchmarks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def load_model(model: str | None = None, *, vlm: str | None = None, diffusion: str | None = None, config: str | None = None,
               device: str = "cpu", dtype=None):
    """(pipeline, paths to hash into the manifest, default steps): a DeepGen model, or the embedded DeepGen-Tiny."""
    import torch

    from ..pipeline import DeepGenPipeline

    dtype = dtype or torch.float32
    if model is None:
        from ..presets import deepgen_tiny_dir

        path = deepgen_tiny_dir()
        logger.info("no --model given: evaluating the embedded DeepGen-Tiny")
        return DeepGenPipeline.from_pretrained(path, torch_dtype=dtype, device=device), [path], 25
    pipe = DeepGenPipeline.from_pretrained(model, vlm=vlm, diffusion=diffusion, config=config, torch_dtype=dtype, device=device)
    return pipe, [Path(p) for p in (model, vlm, diffusion, config) if p], 50


def _settings(args: argparse.Namespace):
    from .runner import EvalSettings

    return EvalSettings(height=args.height, width=args.width, steps=args.steps, guidance_scale=args.cfg, negative_prompt=args.negative_prompt,
                        seed=args.seed, images_per_prompt=args.images_per_prompt, batch_size=args.batch_size, shift=args.shift, limit=args.limit)


def run(args: argparse.Namespace) -> int:
    import torch
    from .manifest import check_out_dir
    from .registry import get_benchmark
    from .runner import process_state, run_eval

    bench = get_benchmark(args.benchmark)  # a typo, a bad data file or another benchmark's folder fail before loading
    samples = bench.read(args.data, args.image_root)
    check_out_dir(args.out, bench.name, None)
    state = process_state(cpu=args.device == "cpu" or (args.device is None and not torch.cuda.is_available()))
    device = args.device or str(state.device)
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    pipe, paths, steps = load_model(args.model, vlm=args.vlm, diffusion=args.diffusion, config=args.config, device=device, dtype=dtype)
    result = run_eval(bench, args.data, args.out, pipe, _settings(args), model_paths=paths, image_root=args.image_root,
                      default_steps=steps, samples=samples, progress=not args.no_progress)
    if not state.is_main_process:
        return 0
    print(f"{bench.title}: {result.out} ({result.total} samples; this process generated {len(result.generated)}, found {result.skipped} done)")
    print(f"score it with: {result.scorer_command}")
    if args.score or args.clip:
        _score(bench, args, samples, device)
    return 0


def _score(bench, args: argparse.Namespace, samples, device: str) -> None:
    from .manifest import read_manifest
    from .scoring import score_folder

    if args.limit is not None:
        samples = samples[: args.limit]
    n = read_manifest(args.out)["generation"]["images_per_prompt"]
    scores = score_folder(bench, args.out, samples, n, ocr=args.score, clip_path=args.clip, device=device)
    (args.out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(scores))
