"""Stage-2 SFT scaling over GPUs: samples/s/GPU, scaling efficiency and peak memory per GPU at 1, 2, 4 and 8 processes.

Each point is one `accelerate launch --config_file train/accelerate/multi_gpu.yaml --num_processes N` of the real
trainer (`deepgen_core.train.trainer.Trainer`, the same code as `deepgen train sft`), with the paper's stage-2
settings from `train/recipes/sft.yaml` (DeepSpeed ZeRO-2, bf16, micro-batch 4, accumulation 3, 512^2) over a
synthetic dataset of 512^2 images (`deepgen_core.train.synthetic`). Without the real weights the model is DeepGen at
real size with seeded random weights (`--model real`: Qwen2.5-VL-3B + SCB + SD3.5-M DiT, stage 2 applied: bridge,
DiT and the VLM LoRA r64 train), which has the real FLOPs and memory. No checkpoint or export is written.

Per point: the median of the trainer's own `samples_per_s` (all ranks' samples of an optimizer step over its wall time)
over the steps after `--warmup`, divided by N; efficiency = (samples/s/GPU at N) / (samples/s/GPU at 1); peak
memory = `torch.cuda.max_memory_allocated` of every rank (the max over ranks is reported).

GPU machine (8 GPUs):   python benchmarks/train_scaling.py --out DIR
CPU check (tiny sizes): python benchmarks/train_scaling.py --out DIR --model tiny --gpus 1,2 --steps 3 --warmup 1
Writes DIR/scaling.json and DIR/scaling.md; DIR/n<N>/ holds each run's log and metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The tiny model's CPU check: its recipe, 64 px, fp32 DDP (DeepSpeed on the CPU builds a JIT kernel first).
TINY_OVERRIDES = ["data.image_size=64", "data.min_side=16", "distributed.deepspeed_config=null", "distributed.mixed_precision=no",
                  "distributed.cpu=true", "micro_batch_size=2"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpus", default="1,2,4,8", help="process counts to run, e.g. 1,2,4,8 (more than the machine has are skipped)")
    parser.add_argument("--model", choices=("real", "tiny"), default="real", help="'real': real-size random weights (GPU); 'tiny': DeepGen-Tiny (CPU check)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per point")
    parser.add_argument("--warmup", type=int, default=4, help="first steps left out of the median (allocation, autotuning)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides, e.g. model.gradient_checkpointing=true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps}): nothing would be timed.")
    return args


def overrides(args: argparse.Namespace, data: dict[str, Path], out: Path) -> list[str]:
    sources = f"[{{path: '{data['blip3o']}', format: blip3o}}, {{path: '{data['edit']}', format: edit}}]"
    items = [f"data.sources={sources}", f"checkpoint.output_dir='{out}'", f"max_steps={args.steps}", "checkpoint.save_every=0",
             "checkpoint.save_at_end=false", "checkpoint.export_at_end=false", "checkpoint.resume=never", "logging.tensorboard=false",
             "logging.progress_bar=false", "logging.log_every=1", "logging.sample_every=0", "data.num_workers=2", "model.init_checkpoint=null",
             "optim.warmup_steps=1"]
    return items + (TINY_OVERRIDES if args.model == "tiny" else []) + args.set


def worker(args: argparse.Namespace, extra: list[str]) -> None:
    """One rank of one point (under accelerate launch): build the config and model, train, write this rank's peak memory."""
    import torch

    from deepgen_core.train.config import load_config
    from deepgen_core.train.modeling import DeepGenTrainModel, enable_gradient_checkpointing
    from deepgen_core.train.stages import setup_stage
    from deepgen_core.train.trainer import Trainer

    recipe = REPO / "train" / "recipes" / ("tiny-sft.yaml" if args.model == "tiny" else "sft.yaml")
    config = load_config("sft", recipe, extra)
    model = None
    if args.model == "real":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from real_size_smoke import real_size_components

        torch.manual_seed(config.seed)
        model = DeepGenTrainModel(real_size_components("cpu", torch.float32))
        setup_stage(model, config)
        if config.model.gradient_checkpointing:
            enable_gradient_checkpointing(model)
    trainer = Trainer(config, model=model)
    trainer.run()
    cuda = torch.cuda.is_available()
    peak = {"rank": trainer.rank, "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}
    if not cuda:
        import resource

        peak["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    (Path(config.checkpoint.output_dir) / f"memory-rank{trainer.rank}.json").write_text(json.dumps(peak))


def run_point(args: argparse.Namespace, n: int, data: dict[str, Path]) -> dict:
    out = args.out / f"n{n}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(REPO / "train/accelerate/multi_gpu.yaml"),
           "--num_processes", str(n), "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), str(Path(__file__).resolve()),
           "--worker", "--out", str(args.out), "--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup), "--",
           *overrides(args, data, out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(out / "log.txt", "w") as log:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        return {"gpus": n, "error": f"exit {done.returncode}; see {out / 'log.txt'}"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r["samples_per_s"] for r in records if r["step"] > args.warmup]
    memory = [json.loads(p.read_text()) for p in sorted(out.glob("memory-rank*.json"))]
    key = "peak_allocated_gib" if memory and memory[0]["peak_allocated_gib"] is not None else "peak_rss_gib"
    samples = statistics.median(timed)
    return {"gpus": n, "samples_per_s": samples, "samples_per_s_per_gpu": samples / n, "steps_timed": len(timed),
            "peak_memory_gib_max_rank": max(m[key] for m in memory), "memory_kind": key, "peak_memory_gib_per_rank": [m[key] for m in memory]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available(args: argparse.Namespace) -> int:
    import torch

    return torch.cuda.device_count() if args.model == "real" else os.cpu_count() or 1


def report(points: list[dict]) -> str:
    base = next((p["samples_per_s_per_gpu"] for p in points if p["gpus"] == 1 and "error" not in p), None)
    lines = ["| GPUs | samples/s | samples/s/GPU | scaling efficiency | peak memory (max rank) |", "|---|---|---|---|---|"]
    for p in points:
        if "error" in p:
            lines.append(f"| {p['gpus']} | {p['error']} | | | |")
            continue
        eff = f"{p['samples_per_s_per_gpu'] / base:.1%}" if base else "n/a (no 1-GPU point)"
        p["scaling_efficiency"] = p["samples_per_s_per_gpu"] / base if base else None
        lines.append(f"| {p['gpus']} | {p['samples_per_s']:.2f} | {p['samples_per_s_per_gpu']:.2f} | {eff} | {p['peak_memory_gib_max_rank']:.2f} GiB ({p['memory_kind']}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.worker:
        return worker(args, extra)
    from deepgen_core.train.synthetic import write_synthetic_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    data = write_synthetic_dataset(args.out / "data", n=64, size=64 if args.model == "tiny" else 512)
    limit = available(args)
    points = []
    for n in (int(x) for x in args.gpus.split(",")):
        if n > limit:
            print(f"skipping {n} processes: {limit} available", flush=True)
            continue
        points.append(run_point(args, n, data))
        print(json.dumps(points[-1]), flush=True)
        table = report(points)
        (args.out / "scaling.json").write_text(json.dumps({"model": args.model, "steps": args.steps, "warmup": args.warmup, "set": args.set, "points": points}, indent=1))
        (args.out / "scaling.md").write_text(table)
    print(report(points))


if __name__ == "__main__":
    main()
