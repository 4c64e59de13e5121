"""MR-GRPO across GPUs: step time and its rollout / reward / update shares at 1, 2, 4 and 8 processes.

Each point is one `accelerate launch --config_file train/accelerate/multi_gpu.yaml --num_processes N` of the real
trainer (`RLTrainer.run`, the code of `deepgen train rl`) with the settings of `train/recipes/rl.yaml` (group 8, 4 prompts
per rank, 50 CPS-SDE steps at 512^2, 60% of the steps trained, micro-batch 32, global GDPO advantages, the SFT auxiliary
loss, DeepSpeed ZeRO-2, bf16). The rewards come over HTTP from a `deepgen reward-server`-style JSON server on loopback
that this script starts (a brightness reward: the HTTP path without a scorer's cost; pass `--reward-url` to time your
own server's rewards instead). `--model real` is DeepGen at real size with seeded random weights (no weights needed);
`--model tiny` is the CPU check. No checkpoint or export is written.

Per point, over the steps after `--warmup` (rank 0's phase timers, `time/rollout`, `time/reward`, `time/update`):
the median step time, each phase's share of it, images per second per GPU, and every rank's peak memory.

GPU machine (8 GPUs):   python benchmarks/rl_scaling.py --out DIR
CPU check (tiny sizes): python benchmarks/rl_scaling.py --out DIR --model tiny --gpus 1,2 --steps 3 --warmup 1
Writes DIR/rl_scaling.json and DIR/rl_scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_scaling import REPO, free_port  # noqa: E402

PHASES = ("time/rollout", "time/reward", "time/update")
# The CPU check: DeepGen-Tiny at 32 px, 4 denoising steps, fp32 DDP, one group per rank.
TINY = ["model.gradient_checkpointing=false", "rollout.num_inference_steps=4", "rollout.height=32", "rollout.width=32", "rollout.prompts_per_step=1",
        "policy.micro_batch_size=8", "policy.sft_micro_batch_size=2", "sft.image_size=32", "sft.min_side=8", "distributed.deepspeed_config=null",
        "distributed.mixed_precision=no", "distributed.cpu=true"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpus", default="1,2,4,8", help="process counts, e.g. 1,2,4,8 (more than the machine has are skipped)")
    parser.add_argument("--model", choices=("real", "tiny"), default="real")
    parser.add_argument("--steps", type=int, default=5, help="RL steps per point")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--reward-url", default=None, help="a running reward server serving 'brightness' (default: one started here)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides, e.g. rollout.prompts_per_step=2")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps}): nothing would be timed.")
    return args


def overrides(args: argparse.Namespace, url: str, sft_data: Path, out: Path) -> list[str]:
    items = [f"run.output_dir='{out}'", f"run.max_steps={args.steps}", "run.save_every=0", "run.save_images_every=0", "run.tensorboard=false",
             "run.resume=never", "model.source=tiny", "rewards.datasets=null", "rewards.prompts=['a red fox reading a newspaper on a park bench']",
             "rewards.weights={brightness: 1.0}", f"rewards.options={{brightness: {{url: '{url}'}}}}", "optim.warmup_steps=0",
             f"sft.sources=[{{path: '{sft_data}', format: blip3o}}]", "sft.num_workers=2"]
    return items + (TINY if args.model == "tiny" else []) + args.set


def worker(args: argparse.Namespace, extra: list[str]) -> None:
    """One rank (under accelerate launch): run the trainer for `--steps` steps, write this rank's peak memory."""
    import torch

    from deepgen_core.train.rl.config import load_rl_config
    from deepgen_core.train.rl.trainer import RLTrainer

    config = load_rl_config(REPO / "train" / "recipes" / "rl.yaml", extra)
    components = None
    if args.model == "real":
        from real_size_smoke import real_size_components

        from deepgen_core.loading import cast

        components = real_size_components("cpu", torch.bfloat16)
        components.transformer = cast(components.transformer, torch.float32)  # fp32 master weights under bf16 autocast
    trainer = RLTrainer(config, components=components)
    trainer.run()
    cuda = torch.cuda.is_available()
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    (Path(config.run.output_dir) / f"memory-rank{trainer.rank}.json").write_text(json.dumps({"peak_gib": peak, "kind": "cuda allocated" if cuda else "rss"}))


def serve_brightness() -> tuple[str, object]:
    from deepgen_core.rewards import BrightnessReward
    from deepgen_core.rewards.service import RewardServer

    server = RewardServer({"brightness": BrightnessReward()}, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def run_point(args: argparse.Namespace, n: int, url: str, sft_data: Path) -> dict:
    out = args.out / f"n{n}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(REPO / "train/accelerate/multi_gpu.yaml"),
           "--num_processes", str(n), "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), str(Path(__file__).resolve()),
           "--worker", "--out", str(args.out), "--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup), "--",
           *overrides(args, url, sft_data, out)]
    with open(out / "log.txt", "w") as log:
        done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        return {"gpus": n, "error": f"exit {done.returncode}; see {out / 'log.txt'}"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in records if r["step"] > args.warmup]
    steps = [sum(r[p] for p in PHASES) for r in timed]
    step_s = statistics.median(steps)
    config = json.loads((out / "config.json").read_text())
    images = config["rollout"]["group_size"] * config["rollout"]["prompts_per_step"] * n
    memory = [json.loads(p.read_text()) for p in sorted(out.glob("memory-rank*.json"))]
    shares = {p.split("/")[1]: statistics.median(r[p] / s for r, s in zip(timed, steps)) for p in PHASES}
    return {"gpus": n, "step_s": step_s, "images_per_step": images, "images_per_s_per_gpu": images / step_s / n, "shares": shares,
            "steps_timed": len(timed), "peak_gib_per_rank": [m["peak_gib"] for m in memory], "memory_kind": memory[0]["kind"] if memory else None}


def report(points: list[dict]) -> str:
    lines = ["| GPUs | images/step | step s | rollout | reward | update | images/s/GPU | peak memory (max rank) |", "|---|---|---|---|---|---|---|---|"]
    for p in points:
        if "error" in p:
            lines.append(f"| {p['gpus']} | {p['error']} | | | | | | |")
            continue
        s = p["shares"]
        lines.append(f"| {p['gpus']} | {p['images_per_step']} | {p['step_s']:.2f} | {s['rollout']:.0%} | {s['reward']:.0%} | {s['update']:.0%} | "
                     f"{p['images_per_s_per_gpu']:.2f} | {max(p['peak_gib_per_rank']):.2f} GiB ({p['memory_kind']}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = parse_args(argv[:split])
    if args.worker:
        return worker(args, argv[split + 1 :])
    import torch

    from deepgen_core.train.synthetic import write_synthetic_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    sft_data = write_synthetic_dataset(args.out / "sft-data", n=64, size=32 if args.model == "tiny" else 512)["blip3o"]
    url, server = (args.reward_url, None) if args.reward_url else serve_brightness()
    limit = torch.cuda.device_count() if args.model == "real" else os.cpu_count() or 1
    points = []
    try:
        for n in (int(x) for x in args.gpus.split(",")):
            if n > limit:
                print(f"skipping {n} processes: {limit} available", flush=True)
                continue
            points.append(run_point(args, n, url, sft_data))
            print(json.dumps(points[-1]), flush=True)
            (args.out / "rl_scaling.json").write_text(json.dumps({"model": args.model, "steps": args.steps, "warmup": args.warmup, "set": args.set, "points": points}, indent=1))
            (args.out / "rl_scaling.md").write_text(report(points))
    finally:
        if server is not None:
            server.shutdown()
    print(report(points))


if __name__ == "__main__":
    main()
