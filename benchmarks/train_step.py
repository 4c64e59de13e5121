"""Real-size (random weights) stage-2 training throughput: ZeRO-2 + bf16 at 512^2, micro-batch 4 per GPU.

Launch one process per GPU, e.g. `torchrun --nproc_per_node 2 benchmarks/train_step.py --out result.json`.
The trainer runs the reference SFT task cycle (1 edit : 2 text-to-image micro-batches, grad_accum 1 so each
optimizer step is one single-task micro-batch) on synthetic 512^2 images. Reported per task: median step time,
samples/s/GPU, peak memory, and model FLOP utilisation

    MFU = FLOPs(one micro-batch, forward + backward, counted by torch's FlopCounterMode) / step time / peak,

where the count covers every matmul/conv/attention actually executed (frozen VLM forward and its activation
backward, vision tower and VAE encodes, bridge, DiT forward + backward), and peak is the GPU's dense bf16 rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_size_smoke import real_size_components

from deepgen_core.train.config import build_config
from deepgen_core.train.metrics import read_metrics
from deepgen_core.train.modeling import DeepGenTrainModel, draw_step_noise
from deepgen_core.train.stages import setup_stage
from deepgen_core.train.trainer import Trainer

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
PROMPT = ("a photograph of a red fox reading a newspaper on a park bench in the early morning light, detailed fur, "
          "soft shadows, shallow depth of field, a cup of coffee beside it, pigeons in the background, ")


class SyntheticSource(torch.utils.data.Dataset):
    """512^2 smooth random images with a long caption; edit samples carry one 512^2 reference."""

    def __init__(self, task: str, n: int = 256, size: int = 512) -> None:
        self.source = SimpleNamespace(task=task, weight=1.0, name=task)
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def _image(self, seed: int) -> torch.Tensor:
        low = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        array = np.asarray(Image.fromarray(low).resize((self.size, self.size), Image.BICUBIC), dtype=np.float32)
        return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1

    def __getitem__(self, i: int) -> dict:
        sample = {"pixel_values": self._image(i), "text": PROMPT * 2, "skipped": 0}
        if self.source.task == "image2image":
            sample["pixel_values_src"] = [self._image(10_000 + i)]
        return sample


class SyntheticData(torch.utils.data.Dataset):
    def __init__(self, size: int = 512) -> None:
        self.sources = [SyntheticSource("text2image", size=size), SyntheticSource("image2image", size=size)]

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key) -> dict:
        return self.sources[key[0]][key[1]]


def count_flops(model: DeepGenTrainModel, data: SyntheticData, micro_batch: int, device_type: str) -> dict[str, float]:
    """FLOPs of forward + backward of one micro-batch per task (gradients are discarded afterwards).

    The VLM runs with eager attention here: torch's SDPA FLOP formula rejects grouped-query attention (16 query,
    2 KV heads), while eager attention expands K/V and is counted as plain matmuls of the same size."""
    vlm = model.encoder.vlm
    vlm.set_attn_implementation("eager")
    out = {}
    for source in data.sources:
        samples = [source[i] for i in range(micro_batch)]
        batch = {"pixel_values": [s["pixel_values"] for s in samples], "texts": [s["text"] for s in samples]}
        if "pixel_values_src" in samples[0]:
            batch["pixel_values_src"] = [s["pixel_values_src"] for s in samples]
        noise = draw_step_noise(model, batch, torch.Generator().manual_seed(0))
        counter = FlopCounterMode(display=False)
        with counter, torch.autocast(device_type, dtype=torch.bfloat16):
            model(batch, noise)["loss"].backward()
        model.zero_grad(set_to_none=True)
        out[source.source.task] = float(counter.get_total_flops())
    vlm.set_attn_implementation("sdpa")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=24, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=6, help="steps excluded from the statistics")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--deepspeed-config", default="train/accelerate/zero2.json", help="'none' for plain DDP")
    parser.add_argument("--out", default=None)
    parser.add_argument("--run-dir", default="/tmp/deepgen-train-bench")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run of this script on the tiny model at 64^2")
    args = parser.parse_args()
    import os

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by the launcher
    if not args.tiny:
        torch.cuda.set_device(local_rank)
    ds = None if args.deepspeed_config == "none" else args.deepspeed_config
    config = build_config("sft", {
        "micro_batch_size": args.micro_batch, "grad_accum": 1, "max_steps": args.warmup + args.steps,
        "optim": {"warmup_steps": 2}, "data": {"num_workers": 3},
        "distributed": {"deepspeed_config": ds, "mixed_precision": "no" if args.tiny else "bf16", "cpu": args.tiny},
        "checkpoint": {"output_dir": args.run_dir, "save_every": 0, "save_at_end": False, "export_at_end": False, "resume": "never"},
        "logging": {"tensorboard": False, "progress_bar": False, "log_every": 1000},
    })
    if args.tiny:
        from deepgen_core.presets import tiny_components

        components, data, device_type = tiny_components(), SyntheticData(64), "cpu"
    else:
        components, data, device_type = real_size_components(f"cuda:{local_rank}", torch.bfloat16), SyntheticData(), "cuda"
    model = DeepGenTrainModel(components)
    counts = setup_stage(model, config)
    flops = count_flops(model.train(), data, args.micro_batch, device_type)
    if not args.tiny:
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(config, dataset=data, model=model)
    result = trainer.run()
    acc = trainer.accelerator
    if not acc.is_main_process:
        return
    records = read_metrics(Path(args.run_dir) / "metrics.jsonl")
    name = "cpu" if args.tiny else torch.cuda.get_device_name()
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), 989.4e12)
    report = {"device": name, "gpus": acc.num_processes, "distributed": str(acc.distributed_type), "torch": torch.__version__,
              "micro_batch": args.micro_batch, "resolution": data.sources[0].size, "trainable_params": counts,
              "params": {k: sum(p.numel() for p in getattr(model, k).parameters()) for k in ("encoder", "transformer", "vae")},
              "flops_per_micro_batch": flops, "peak_memory_gib_rank0": round(max(r.get("memory/peak_gib", 0.0) for r in records.values()), 2),
              "losses_first_last": [result.losses[0], result.losses[-1]], "finite": all(np.isfinite(result.losses))}
    for task in ("text2image", "image2image"):
        times = [args.micro_batch * acc.num_processes / r["samples_per_s"] for s, r in records.items() if s > args.warmup and f"loss/{task}" in r]
        if times:
            median = statistics.median(times)
            report[task] = {"steps": len(times), "median_step_s": round(median, 4), "samples_per_s_per_gpu": round(args.micro_batch / median, 2),
                            "mfu": round(flops[task] / median / peak_flops, 4)}
    all_times = [args.micro_batch * acc.num_processes / r["samples_per_s"] for s, r in records.items() if s > args.warmup]
    report["cycle_samples_per_s_per_gpu"] = round(args.micro_batch * len(all_times) / sum(all_times), 2)
    print(json.dumps(report, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
