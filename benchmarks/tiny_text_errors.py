"""Where a DeepGen-Tiny model misreads words: held-out errors by colour pair, and its training prompts of those pairs.

    python3 benchmarks/tiny_text_errors.py                         # the embedded model
    python3 benchmarks/tiny_text_errors.py --model runs/deepgen-tiny/stage3/export --pairs black/green,green/black

Part 1 renders the first `--n` held-out word prompts (20 steps, CFG 4, seed 0, as `evaluate_text` does) and lists
every misread word with what OCR read, counted by (text colour, background). Part 2 renders every *training*
(word, colour pair) combination of `--pairs` with `--seeds` seeds each (ODE, `--steps` steps as the rollout, CFG 4) and
prints the share read right per pair and how many of the seeds each prompt gets right: a prompt right under no
seed gives an RL group no signal. CPU, a few minutes.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch

from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import deepgen_tiny_dir
from deepgen_core.rewards.ocr import OCRReward, normalize_text
from deepgen_core.tiny_world.evaluate import _generate
from deepgen_core.tiny_world.sampling import TEXT_COMBOS, heldout_texts
from deepgen_core.tiny_world.world import TextScene, describe_text

# `_generate` is the evaluation's own renderer (batch b seeded `seed + b`), so part 1 sees what evaluate_text sees.


def exact_reads(pipe, ocr: OCRReward, prompts: list[str], words: list[str], seed: int, steps: int, batch: int) -> np.ndarray:
    """Render `prompts` (CFG 4, `_generate`'s seeding from `seed`) and say which read back exactly as `words` (a failed
    read counts as wrong)."""
    reads = ocr.recognize_many(_generate(pipe, prompts, None, seed, steps, 4.0, batch, 128))
    return np.array([not isinstance(r, Exception) and normalize_text(r) == normalize_text(w) for r, w in zip(reads, words)], dtype=bool)


def read_pair_training_prompts(pipe, ocr: OCRReward, pairs: list[tuple[str, str]], seeds: int, steps: int,
                               batch: int) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """Every training (word, colour, background) combination of `pairs`, one prompt each, rendered under `seeds`
    seeds (ODE, `steps` steps, CFG 4): the combinations and a (seeds, combinations) bool array of exact reads."""
    combos = [c for c in TEXT_COMBOS["train"] if (c[1], c[2]) in pairs]
    if not combos:
        return combos, np.zeros((seeds, 0), dtype=bool)
    rng = np.random.default_rng(0)
    prompts = [describe_text(TextScene(*c), rng) for c in combos]
    words = [c[0] for c in combos]
    return combos, np.stack([exact_reads(pipe, ocr, prompts, words, 1000 * (seed + 1), steps, batch) for seed in range(seeds)])


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="converted DeepGen-Tiny folder (default: the embedded one)")
    parser.add_argument("--n", type=int, default=256, help="held-out word prompts (0: skip part 1)")
    parser.add_argument("--pairs", default="black/green,green/black,yellow/blue", help="TEXT/BACKGROUND colour pairs of part 2 ('' skips it)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16, help="sampling steps of part 2 (the RL rollout's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the pipeline runs (cuda: a device machine; the GPU rounds differently, so a few words read differently from the CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = DeepGenPipeline.from_pretrained(args.model or deepgen_tiny_dir(), torch_dtype=torch.float32).to(args.device)
    ocr = OCRReward(workers=args.threads)
    try:
        if args.n:
            samples = heldout_texts(args.n, 0)
            reads = ocr.recognize_many(_generate(pipe, [s.prompt for s in samples], None, 0, 20, 4.0, args.batch, 128))
            wrong = [(s.scene, r) for s, r in zip(samples, reads) if normalize_text(r) != normalize_text(s.scene.word)]
            print(f"held-out: {args.n - len(wrong)} of {args.n} read exactly")
            totals = collections.Counter((s.scene.colour, s.scene.background) for s in samples)
            for (colour, background), count in collections.Counter((sc.colour, sc.background) for sc, _ in wrong).most_common():
                print(f"  {colour} on {background}: {count} of {totals[(colour, background)]} wrong")
            for scene, read in wrong:
                print(f"  {scene.word} -> {read!r} ({scene.colour} on {scene.background})")
        pairs = [tuple(p.split("/")) for p in args.pairs.split(",") if p]
        combos, right = read_pair_training_prompts(pipe, ocr, pairs, args.seeds, args.steps, args.batch)
        if combos:
            for pair in pairs:
                idx = [i for i, c in enumerate(combos) if (c[1], c[2]) == pair]
                spread = dict(sorted(collections.Counter(right[:, idx].sum(0).tolist()).items()))
                print(f"training prompts, {pair[0]} on {pair[1]}: {len(idx)} prompts, {right[:, idx].mean():.3f} read right; "
                      f"prompts by seeds right (of {args.seeds}): {spread}")
    finally:
        ocr.close()


if __name__ == "__main__":
    main()
