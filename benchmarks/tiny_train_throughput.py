"""DeepGen-Tiny training throughput on the device, side by side in one process: stage-1 and stage-2 samples/s at
several micro-batch sizes, with the latent cache on and (once) off for the ratio, over the recipe's own data.

    python3 benchmarks/tiny_train_throughput.py [--steps 40] [--json OUT.json]

Each case runs the real `Trainer` from the shipped recipe (train/recipes/tiny/stage{1,2}.yaml) for `--steps`
optimizer steps with checkpoints and export off; samples/s is the median over the steps after the first five
(cache building and the first CUDA kernels are counted in `setup_s`, not in the rate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml


def main() -> None:
    from accelerate.state import AcceleratorState

    from deepgen_core.loading import save_converted
    from deepgen_core.models.tiny_vae import tiny_taesd_vae
    from deepgen_core.presets import deepgen_tiny_architecture
    from deepgen_core.tiny_world import write_dataset
    from deepgen_core.train.config import load_config
    from deepgen_core.train.metrics import read_metrics
    from deepgen_core.train.tiny_recipe import DEFAULT_RECIPES
    from deepgen_core.train.trainer import Trainer

    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--run", default="/tmp/tiny-throughput")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batches", default="256,1024", help="stage-1 micro-batch sizes")
    parser.add_argument("--sft-batches", default="256", help="stage-2 micro-batch sizes")
    parser.add_argument("--json", default=None)
    parser.add_argument("--data-scale", type=float, default=1.0, help="fraction of the recipe's dataset (a CPU smoke run)")
    args = parser.parse_args()
    run = Path(args.run)
    data = yaml.safe_load((DEFAULT_RECIPES / "data.yaml").read_text())
    if not (run / "data" / "t2i.json").is_file():
        sizes = {k: max(8, int(data[k] * args.data_scale)) for k in ("n_t2i", "n_edit", "n_text")}
        write_dataset(run / "data", **sizes, seed=0, workers=16)
    if not (run / "init").is_dir():
        save_converted(deepgen_tiny_architecture(0, vae=tiny_taesd_vae(0)), run / "init", dtype=torch.float32)
    batches = [int(b) for b in args.batches.split(",")]
    cases = [("pretrain", "stage1.yaml", batches[0], False)]
    cases += [("pretrain", "stage1.yaml", b, True) for b in batches]
    cases += [("sft", "stage2.yaml", int(b), True) for b in args.sft_batches.split(",")]
    rows = []
    for i, (stage, recipe, batch, cache) in enumerate(cases):
        AcceleratorState._reset_state(reset_partial_state=True)
        path = run / f"{i}.yaml"
        path.write_text((DEFAULT_RECIPES / recipe).read_text().replace("{run}", str(run)).replace(f"{run}/stage1/export", f"{run}/init"))
        out = run / f"case-{i}"
        overrides = [f"max_steps={args.steps}", f"micro_batch_size={batch}", f"data.cache_latents={str(cache).lower()}", "optim.warmup_steps=1",
                     "checkpoint.save_every=0", "checkpoint.save_at_end=false", "checkpoint.export_at_end=false", "checkpoint.resume=never",
                     f"checkpoint.output_dir={out}", "logging.log_every=10"]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        Trainer(load_config(stage, path, overrides)).run()
        total = time.perf_counter() - started
        records = read_metrics(out / "metrics.jsonl")
        rates = [records[s]["samples_per_s"] for s in sorted(records) if s > 5]
        rate = statistics.median(rates)
        row = {"stage": stage, "micro_batch": batch, "cache": cache, "samples_per_s": round(rate, 1), "ms_per_step": round(1000 * batch / rate, 1),
               "setup_s": round(total - sum(batch / records[s]["samples_per_s"] for s in records), 1),
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None, "final_loss": round(records[max(records)]["loss"], 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| stage | micro-batch | cache | samples/s | ms/step | setup s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['micro_batch']} | {r['cache']} | {r['samples_per_s']} | {r['ms_per_step']} | {r['setup_s']} | {r['peak_gib']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
