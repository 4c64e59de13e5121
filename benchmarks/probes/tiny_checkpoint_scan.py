"""Read words through a stage-3 run's checkpoints: where along the run did held-out words (and a pair's training prompts) move?

    python3 benchmarks/probes/tiny_checkpoint_scan.py --seed-model deepgen_core/assets/deepgen-tiny --run /tmp/bg/A --run /tmp/bg/B \
        --pairs black/green,green/black --out scan.jsonl

For the seed model (step 0) and every `--every`-th checkpoint of each `--run` (`<run>/checkpoints/step-*/trainable.safetensors`
of `deepgen train rl`), the seed model's DiT takes the checkpoint's weights, then renders:
- the first `--n-text` held-out word prompts as the evaluation does (20 steps, CFG 4, seed 0, batch 64), counting the exact
  reads overall and on the held-out combinations of `--pairs`;
- every training (word, colour pair) combination of `--pairs` under `--seeds` seeds (ODE, 16 steps, CFG 4, batch 64),
  with `tiny_text_errors.py`'s part-2 reader: the RL reward's own ground, where stage 2 leaves room.
OCR reads at `--detection-side` (320, the RL reward's; the evaluation's 736 reads a few words differently). One JSON line
per checkpoint, and the table. GPU or CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.rewards.ocr import OCRReward
from deepgen_core.tiny_world.sampling import heldout_texts
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/, for tiny_text_errors
from tiny_text_errors import exact_reads, read_pair_training_prompts  # noqa: E402

PREFIX = "inner.transformer."  # the RL model's trainable keys (DeepGenTrainModel wraps the DiT as `inner.transformer`)


def checkpoints(run: Path, every: int) -> list[tuple[int, Path]]:
    found = sorted((int(p.parent.name.split("-")[1]), p) for p in run.glob("checkpoints/step-*/trainable.safetensors"))
    return [(step, path) for step, path in found if step % every == 0]


def load_dit(pipe: DeepGenPipeline, path: Path) -> None:
    state = {k[len(PREFIX):]: v for k, v in load_file(str(path)).items() if k.startswith(PREFIX)}
    if not state:
        raise SystemExit(f"{path}: no '{PREFIX}*' tensors; is it a `deepgen train rl` checkpoint?")
    _, unexpected = pipe.transformer.load_state_dict(state, strict=False)
    if unexpected:
        raise SystemExit(f"{path}: tensors the DiT does not have: {unexpected[:5]}")


def scan_row(pipe, ocr: OCRReward, n_text: int, pairs: list[tuple[str, str]], seeds: int) -> dict:
    held = heldout_texts(n_text, 0)
    right = exact_reads(pipe, ocr, [s.prompt for s in held], [s.scene.word for s in held], 0, 20, 64)
    in_pairs = np.array([(s.scene.colour, s.scene.background) in pairs for s in held])
    _, train = read_pair_training_prompts(pipe, ocr, pairs, seeds, 16, 64)
    return {"heldout": int(right.sum()), "heldout_n": len(held), "heldout_pairs": int(right[in_pairs].sum()),
            "heldout_pairs_n": int(in_pairs.sum()), "train_pairs": float(train.mean()) if train.size else None,
            "train_pairs_n": int(train.size)}


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-model", required=True, help="the converted folder the runs started from")
    parser.add_argument("--run", action="append", required=True, help="a `deepgen train rl` output_dir")
    parser.add_argument("--every", type=int, default=10, help="scan checkpoints whose step is a multiple of this")
    parser.add_argument("--pairs", default="black/green,green/black", help="TEXT/BACKGROUND colour pairs")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n-text", type=int, default=256)
    parser.add_argument("--detection-side", type=int, default=320)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", default=None, help="JSON lines file")
    args = parser.parse_args()
    pairs = [tuple(p.split("/")) for p in args.pairs.split(",") if p]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = DeepGenPipeline.from_pretrained(args.seed_model, torch_dtype=torch.float32).to(device)
    start = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    ocr = OCRReward(workers=args.workers, detection_side=args.detection_side)
    rows = []
    try:
        jobs = [("seed", 0, None)] + [(Path(r).name, step, path) for r in args.run for step, path in checkpoints(Path(r), args.every)]
        for run, step, path in jobs:
            pipe.transformer.load_state_dict(start)
            if path is not None:
                load_dit(pipe, path)
            row = {"run": run, "step": step, **scan_row(pipe, ocr, args.n_text, pairs, args.seeds)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        ocr.close()
    print("\n| run | step | held-out words | held-out, the pairs | training prompts of the pairs |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['step']} | {r['heldout']} / {r['heldout_n']} | {r['heldout_pairs']} / {r['heldout_pairs_n']} | "
              f"{r['train_pairs']:.3f} ({r['train_pairs_n']}) |")


if __name__ == "__main__":
    main()
