"""CFG-parallel inference latency: one image on one GPU against the same image with its CFG branches on 2+ GPUs.

Cases (CFG 4, 50 Euler steps, batch 1): text-to-image at 1024^2 and a single-reference edit at 512^2. For each case:
rank 0 alone with the plain pipeline (the other ranks wait), then every rank with `enable_cfg_parallel`; the median of
`--runs` calls after a warm-up call (which captures the CUDA graphs of the new DiT shapes), and the largest difference
between the two latents. `--model real` is DeepGen at real size with seeded random weights in bf16 (no weights needed),
`--model tiny` the embedded DeepGen-Tiny (CPU check, 128^2), or a converted model folder.

GPU machine:  torchrun --nproc_per_node 2 benchmarks/cfg_parallel.py --out DIR
CPU check:    torchrun --nproc_per_node 2 benchmarks/cfg_parallel.py --out DIR --model tiny --steps 4 --runs 1
Rank 0 writes DIR/cfg_parallel.json and DIR/cfg_parallel.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deepgen_core.parallel.cfg import disable_cfg_parallel, enable_cfg_parallel  # noqa: E402
from deepgen_core.pipeline import DeepGenPipeline  # noqa: E402

PROMPT = "a photograph of a red fox reading a newspaper on a park bench, morning light, detailed fur"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="real", help="'real' (random weights at real size), 'tiny' (DeepGen-Tiny) or a converted model folder")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    return parser.parse_args()


def build_pipeline(model: str, device: torch.device) -> tuple[DeepGenPipeline, list[tuple[str, dict]]]:
    """The pipeline on this rank's device and the cases to time."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if model == "real":
        from real_size_smoke import real_size_components

        pipe = DeepGenPipeline.from_components(real_size_components(str(device), dtype))
    else:
        from deepgen_core.presets import deepgen_tiny_dir

        pipe = DeepGenPipeline.from_pretrained(deepgen_tiny_dir() if model == "tiny" else model, torch_dtype=dtype, device=str(device))
    if model == "tiny":
        image = Image.new("RGB", (128, 128), (30, 60, 200))
        return pipe, [("t2i_128", {"prompt": "a large red circle in the center, blue background", "height": 128, "width": 128}),
                      ("edit_128", {"prompt": "make the circle green", "image": image})]
    reference = Image.effect_noise((512, 512), 64).convert("RGB")
    return pipe, [("t2i_1024", {"prompt": PROMPT, "height": 1024, "width": 1024}), ("edit_512", {"prompt": "make the sky purple", "image": reference})]


def timed_call(pipe: DeepGenPipeline, kwargs: dict, steps: int, runs: int, device: torch.device) -> tuple[float, torch.Tensor]:
    def call() -> torch.Tensor:
        return pipe(**kwargs, num_inference_steps=steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(0), output_type="latent").latents

    call()  # warm-up: CUDA graph capture for this shape
    times, latents = [], None
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        latents = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), latents


def main() -> None:
    args = parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    pipe, cases = build_pipeline(args.model, device)
    results = {"ranks": world, "device": torch.cuda.get_device_name(device) if cuda else "cpu", "model": args.model, "steps": args.steps, "cases": {}}
    for name, kwargs in cases:
        single = None
        if rank == 0:
            single, single_latents = timed_call(pipe, kwargs, args.steps, args.runs, device)
        dist.barrier()
        enable_cfg_parallel(pipe)
        parallel, latents = timed_call(pipe, kwargs, args.steps, args.runs, device)
        disable_cfg_parallel(pipe)
        if rank == 0:
            diff = (latents.float() - single_latents.float()).abs().max().item()
            results["cases"][name] = {"one_gpu_s": round(single, 4), "cfg_parallel_s": round(parallel, 4), "speedup": round(single / parallel, 3),
                                      "max_abs_latent_diff": diff, "peak_gib_rank0": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None}
            print(name, json.dumps(results["cases"][name]), flush=True)
        dist.barrier()
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cfg_parallel.json").write_text(json.dumps(results, indent=1))
        rows = [f"| {n} | {c['one_gpu_s']:.3f} | {c['cfg_parallel_s']:.3f} | {c['speedup']:.2f}x | {c['max_abs_latent_diff']:.2e} |" for n, c in results["cases"].items()]
        header = f"{world} ranks, {results['device']}, {args.steps} steps, CFG 4\n\n| case | 1 GPU s | CFG parallel s | speedup | max latent diff |\n|---|---|---|---|---|\n"
        (args.out / "cfg_parallel.md").write_text(header + "\n".join(rows) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
