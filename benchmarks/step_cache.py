"""Step caching (`enable_fast_path(step_cache=)`) on DeepGen-Tiny, on the CPU: skipped DiT calls, speed, quality.

For each threshold, the embedded DeepGen-Tiny (fp32) generates the tiny world's held-out text-to-image prompts and
edits (`tiny_world.evaluate`: seed 0, CFG 4, batch 8); the table gives the fraction of DiT calls skipped, the
wall time of one pipeline call (encode, denoise, decode of one batch of t2i prompts; the thresholds interleaved over
several rounds, the minimum kept, because a shared CPU's load swings by several times) and its speed-up against
threshold 0 (off, the plain pipeline), and the held-out metrics: t2i exact (all five attributes right), colour and
shape, edit success and the untouched region's PSNR.

    python3 benchmarks/step_cache.py --out DIR [--thresholds 0,0.05,0.1,0.2] [--rounds 3]
        [--phases timing,metrics] [--name step_cache] [--n-t2i 24] [--n-edit 24] [--steps 25]

Writes DIR/NAME.json and DIR/NAME.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import deepgen_tiny_dir
from deepgen_core.tiny_world.evaluate import evaluate_edits, evaluate_t2i


class CountingPipe:
    """Calls the pipeline, adding up the DiT calls run and skipped."""

    def __init__(self, pipe: DeepGenPipeline, steps_per_call: int) -> None:
        self.pipe, self.steps_per_call = pipe, steps_per_call
        self.calls, self.skipped = 0, 0

    def __call__(self, *args, **kwargs):
        out = self.pipe(*args, **kwargs)
        caches = self.pipe.last_step_caches
        self.calls += sum(len(c.computed) for c in caches) if caches else self.steps_per_call
        self.skipped += sum(c.skipped for c in caches)
        return out


def run_threshold(pipe: DeepGenPipeline, threshold: float, args: argparse.Namespace) -> dict:
    pipe.enable_fast_path(step_cache=threshold)
    counter = CountingPipe(pipe, args.steps)
    t2i = evaluate_t2i(counter, n=args.n_t2i, steps=args.steps, batch=args.batch)
    edit = evaluate_edits(counter, n=args.n_edit, steps=args.steps, batch=args.batch)
    return {"threshold": threshold, "dit_calls": counter.calls, "skipped": counter.skipped,
            "skipped_fraction": counter.skipped / max(counter.calls, 1), "t2i": t2i, "edit": edit}


def time_thresholds(pipe: DeepGenPipeline, thresholds: list[float], args: argparse.Namespace) -> dict[float, dict[str, list[float]]]:
    """Wall and process-CPU seconds per pipeline call (one batch of held-out t2i prompts), thresholds interleaved over
    `args.rounds` rounds so that a busy machine slows every threshold alike; a threshold's time is its minimum.
    CPU seconds move far less with the machine's load than wall seconds (with one thread they are the work done)."""
    from deepgen_core.tiny_world.sampling import heldout_t2i

    prompts = [s.prompt for s in heldout_t2i(args.batch, 0)]
    seconds = {t: {"wall": [], "cpu": []} for t in thresholds}
    for _ in range(args.rounds):
        for threshold in thresholds:
            pipe.enable_fast_path(step_cache=threshold)
            wall, cpu = time.perf_counter(), time.process_time()
            pipe(prompts, num_inference_steps=args.steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(0), height=128, width=128)
            seconds[threshold]["wall"].append(time.perf_counter() - wall)
            seconds[threshold]["cpu"].append(time.process_time() - cpu)
    return seconds


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The table; a phase that did not run leaves its columns as '-'."""
    timed = "time" in rows[0]
    base = {k: min(rows[0]["time"][k]) for k in ("wall", "cpu")} if timed else {}
    lines = [f"DeepGen-Tiny, CPU ({torch.get_num_threads()} threads), fp32, {args.steps} steps, CFG 4, batch {args.batch}; "
             f"metrics: n = {args.n_t2i} t2i prompts + {args.n_edit} edits per row; time: one call of {args.batch} t2i prompts, "
             f"min of {args.rounds} interleaved rounds (all rounds in the JSON).", "",
             "| threshold | DiT calls skipped | wall s / call (speed-up) | CPU s / call (speed-up) | t2i exact | t2i colour / shape | edit success | untouched PSNR (dB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['threshold']:g}"]
        cells.append(f"{r['skipped']}/{r['dit_calls']} ({r['skipped_fraction']:.0%})" if "t2i" in r else "-")
        for k in ("wall", "cpu"):
            cells.append(f"{min(r['time'][k]):.2f} ({base[k] / min(r['time'][k]):.2f}x)" if timed else "-")
        if "t2i" in r:
            t, e = r["t2i"], r["edit"]
            cells += [f"{t['exact']:.2f}", f"{t['colour']:.2f} / {t['shape']:.2f}", f"{e['success']:.2f}", f"{e['psnr_untouched']:.1f}"]
        else:
            cells += ["-"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--thresholds", default="0,0.05,0.1,0.2")
    parser.add_argument("--n-t2i", type=int, default=24)
    parser.add_argument("--n-edit", type=int, default=24)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--phases", default="timing,metrics", help="timing, metrics or both (comma-separated)")
    parser.add_argument("--name", default="step_cache", help="output file stem")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = DeepGenPipeline.from_pretrained(deepgen_tiny_dir(), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # Warm-up: the first call of a process pays one-time costs (allocator, kernels, tokenizer) no row should carry.
    pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), height=128, width=128)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    phases = set(args.phases.split(","))
    timed = time_thresholds(pipe, thresholds, args) if "timing" in phases else {}
    rows = []
    for threshold in thresholds:
        row = run_threshold(pipe, threshold, args) if "metrics" in phases else {"threshold": threshold}
        rows.append({**row, **({"time": timed[threshold]} if timed else {})})
        logging.info("threshold %g: %s", threshold, {k: v for k, v in rows[-1].items() if k not in ("t2i", "edit")})
    meta = {"args": {k: str(v) for k, v in vars(args).items()}, "threads": torch.get_num_threads(), "torch": torch.__version__}
    (args.out / f"{args.name}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(rows, args))
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
