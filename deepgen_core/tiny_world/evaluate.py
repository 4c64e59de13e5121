"""Acceptance metrics of a DeepGen pipeline on the tiny world's held-out split (CPU, deterministic seeds).

- text-to-image: per-attribute accuracy of the largest detected object (colour, shape, size, position) and of
  the background, on held-out (colour, shape, background) combinations;
- editing: success (the detected output equals the target scene: background and the (colour, shape, position)
  of every object) overall and per kind, and the PSNR of the untouched region (outside the union of the input's
  and target's object boxes, grown by 4 px) between output and input;
- text: OCR exact-word accuracy (and mean character accuracy) on held-out (word, colour, background) prompts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..rewards.ocr import OCRReward, normalize_text, text_accuracy
from .detect import Detection, detect
from .sampling import EDIT_KINDS, heldout_edits, heldout_t2i, heldout_texts
from .world import Scene, object_box, render

logger = logging.getLogger(__name__)

UNTOUCHED_MARGIN = 4  # px (at 128) the object boxes grow by before the untouched region is measured
PSNR_CAP = 100.0  # dB reported for an untouched region reproduced exactly
# (task, metric) -> the acceptance threshold of DeepGen-Tiny (None: reported without a threshold).
ACCEPTANCE: dict[tuple[str, str], float | None] = {
    ("t2i", "colour"): 0.9, ("t2i", "shape"): 0.8, ("t2i", "background"): 0.9, ("t2i", "size"): None,
    ("t2i", "position"): None, ("t2i", "exact"): None, ("edit", "success"): 0.8, ("edit", "psnr_untouched"): 25.0,
    ("text", "exact_word"): None, ("text", "char_accuracy"): None,
}


def _generate(pipe: Callable, prompts: Sequence[str], images: Sequence[Image.Image] | None, seed: int,
              steps: int, cfg: float, batch: int, size: int) -> list[Image.Image]:
    """Run `pipe` over `prompts` in batches; batch b uses the CPU generator seeded `seed + b`."""
    out: list[Image.Image] = []
    for b, start in enumerate(range(0, len(prompts), batch)):
        refs = None if images is None else [[image] for image in images[start:start + batch]]
        result = pipe(list(prompts[start:start + batch]), image=refs, num_inference_steps=steps, guidance_scale=cfg,
                      generator=torch.Generator("cpu").manual_seed(seed + b), height=size, width=size)
        out.extend(result.images)
    return out


def _objects_key(scene: Scene) -> list[tuple[str, str, str]]:
    return sorted((o.colour, o.shape, o.position) for o in scene.objects)


def scene_matches(detection: Detection, target: Scene) -> bool:
    """Background and the (colour, shape, position) of every object equal the target's."""
    return detection.background == target.background and _objects_key(detection.scene) == _objects_key(target)


def untouched_mask(source: Scene, target: Scene, size: int, margin: float = UNTOUCHED_MARGIN) -> np.ndarray:
    """(size, size) bool: pixels outside every object box of `source` and `target`, grown by `margin` px at 128."""
    mask = np.ones((size, size), dtype=bool)
    grow = margin * size / 128
    for obj in source.objects + target.objects:
        x0, y0, x1, y1 = object_box(obj, size)
        top, left = max(math.floor(y0 - grow), 0), max(math.floor(x0 - grow), 0)
        mask[top:math.ceil(y1 + grow), left:math.ceil(x1 + grow)] = False
    return mask


def masked_psnr(a: Image.Image, b: Image.Image, mask: np.ndarray) -> float:
    """PSNR (dB, 8-bit range) of `a` vs `b` over the pixels where `mask` is True (capped at `PSNR_CAP`)."""
    if a.size != b.size:
        a = a.resize(b.size, Image.BICUBIC)
    diff = np.asarray(a.convert("RGB"), dtype=np.float64) - np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float((diff[mask] ** 2).mean()) if mask.any() else 0.0
    return PSNR_CAP if mse <= 255.0**2 * 10 ** (-PSNR_CAP / 10) else 10 * math.log10(255.0**2 / mse)


def evaluate_t2i(pipe: Callable, n: int = 64, seed: int = 0, steps: int = 20, cfg: float = 4.0, batch: int = 8,
                 size: int = 128) -> dict[str, float]:
    """Attribute accuracies on `n` held-out 1-object prompts.

    Args:
        pipe: a `DeepGenPipeline` (or anything called the same way returning `.images`).
        n, seed: held-out samples `heldout_t2i(n, seed)`; batch b is generated with seed `seed + b`.
        steps, cfg, batch, size: sampling steps, guidance scale, prompts per call, image side (px).
    Returns:
        {'colour', 'shape', 'size', 'position', 'background', 'exact' (all five right), 'single' (exactly one
        object detected): accuracies in [0, 1], 'n'}.
    """
    samples = heldout_t2i(n, seed)
    images = _generate(pipe, [s.prompt for s in samples], None, seed, steps, cfg, batch, size)
    hits = {k: 0 for k in ("colour", "shape", "size", "position", "background", "exact", "single")}
    for sample, image in zip(samples, images):
        detection = detect(image)
        target = sample.scene.objects[0]
        found = detection.objects[0].obj if detection.objects else None
        right = {a: found is not None and getattr(found, a) == getattr(target, a) for a in ("colour", "shape", "size", "position")}
        right["background"] = detection.background == sample.scene.background
        for key, ok in right.items():
            hits[key] += ok
        hits["exact"] += all(right.values())
        hits["single"] += len(detection.objects) == 1
    return {**{k: v / max(n, 1) for k, v in hits.items()}, "n": n}


def evaluate_edits(pipe: Callable, n: int = 64, seed: int = 0, steps: int = 20, cfg: float = 4.0, batch: int = 8,
                   size: int = 128) -> dict[str, float]:
    """Edit success and untouched-region PSNR on `n` held-out triplets (`heldout_edits(n, seed)`).

    Returns:
        {'success', 'success_<kind>' and 'n_<kind>' per kind, 'psnr_untouched' (mean dB), 'n'}.
    """
    samples = heldout_edits(n, seed)
    sources = [render(s.source, size) for s in samples]
    outputs = _generate(pipe, [s.instruction for s in samples], sources, seed, steps, cfg, batch, size)
    success = {k: [] for k in EDIT_KINDS}
    psnrs = []
    for sample, source, output in zip(samples, sources, outputs):
        success[sample.kind].append(scene_matches(detect(output), sample.target))
        psnrs.append(masked_psnr(output, source, untouched_mask(sample.source, sample.target, size)))
    flat = [ok for oks in success.values() for ok in oks]
    result: dict[str, float] = {"success": float(np.mean(flat)) if flat else 0.0, "psnr_untouched": float(np.mean(psnrs)) if psnrs else 0.0}
    for kind, oks in success.items():
        result[f"success_{kind}"] = float(np.mean(oks)) if oks else float("nan")
        result[f"n_{kind}"] = len(oks)
    return {**result, "n": n}


def evaluate_text(pipe: Callable, n: int = 32, seed: int = 0, steps: int = 20, cfg: float = 4.0, batch: int = 8,
                  size: int = 128, ocr: OCRReward | None = None) -> dict[str, float]:
    """OCR exact-word accuracy (and mean character accuracy) on `n` held-out text prompts (`heldout_texts`)."""
    ocr = ocr or OCRReward()
    samples = heldout_texts(n, seed)
    images = _generate(pipe, [s.prompt for s in samples], None, seed, steps, cfg, batch, size)
    exact, chars = [], []
    for sample, read in zip(samples, ocr.recognize_many(images)):  # side by side with `OCRReward(workers=N)`
        if isinstance(read, Exception):
            raise read
        exact.append(normalize_text(read) == normalize_text(sample.scene.word))
        chars.append(text_accuracy(read, sample.scene.word))
    return {"exact_word": float(np.mean(exact)) if exact else 0.0, "char_accuracy": float(np.mean(chars)) if chars else 0.0, "n": n}


def evaluate_all(pipe: Callable, n_t2i: int = 64, n_edit: int = 64, n_text: int = 32, seed: int = 0, steps: int = 20,
                 cfg: float = 4.0, batch: int = 8, size: int = 128) -> dict[str, dict[str, float]]:
    """All three evaluations (a task with n = 0 is skipped); adds {'seconds': {task: wall time}}."""
    results: dict[str, dict[str, float]] = {"seconds": {}}
    for task, n, fn in (("t2i", n_t2i, evaluate_t2i), ("edit", n_edit, evaluate_edits), ("text", n_text, evaluate_text)):
        if n > 0:
            start = time.perf_counter()
            results[task] = fn(pipe, n=n, seed=seed, steps=steps, cfg=cfg, batch=batch, size=size)
            results["seconds"][task] = time.perf_counter() - start
            logger.info("tiny-world %s: %s", task, results[task])
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A markdown table of `evaluate_all`'s results with the acceptance thresholds and pass/fail."""
    lines = ["| task | metric | value | threshold | pass |", "|---|---|---|---|---|"]
    for task in ("t2i", "edit", "text"):
        for metric, value in results.get(task, {}).items():
            if metric == "n" or metric.startswith("n_"):
                continue
            threshold = ACCEPTANCE.get((task, metric))
            shown = f"{value:.1f} dB" if metric == "psnr_untouched" else f"{value:.3f}"
            verdict = "" if threshold is None or math.isnan(value) else ("yes" if value >= threshold else "NO")
            lines.append(f"| {task} (n={results[task]['n']}) | {metric} | {shown} | {'' if threshold is None else threshold} | {verdict} |")
    return "\n".join(lines)
