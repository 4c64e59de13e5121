"""Scores computed here, with nothing beyond the project's own dependencies:

- CVTG-2K word accuracy and NED from the offline OCR engine of the OCR reward (rapidocr, PP-OCR models). Word
  accuracy: the share of target words (lower-cased, spaces and surrounding punctuation removed) found in the text
  read from their image, each read occurrence used once. NED: 1 - edit distance / longer length between the read
  text and the targets joined, averaged over images. The paper's numbers come from the benchmark's own OCR
  evaluation, so ours are comparable in kind, not digit for digit.
- CLIPScore (Hessel et al.): 2.5 * max(cos, 0) of CLIP image and prompt features from a local CLIP folder
  (openai/clip-vit-large-patch14), averaged.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..rewards.ocr import OCRReward, levenshtein, normalize_text
from .base import Benchmark, Sample

logger = logging.getLogger(__name__)
CLIP_SCORE_WEIGHT = 2.5


def target_words(targets: Sequence[str]) -> list[str]:
    words = (w.strip(string.punctuation).lower() for t in targets for w in t.split())
    return [w for w in words if w]


def word_hits(read: str, words: Sequence[str]) -> int:
    """How many of `words` occur in the normalised read text, each occurrence counted once."""
    text, hits = normalize_text(read), 0
    for word in words:
        at = text.find(normalize_text(word))
        if at >= 0:
            hits += 1
            text = text[:at] + "\0" + text[at + len(normalize_text(word)):]
    return hits


def ned_similarity(read: str, targets: Sequence[str]) -> float:
    """1 - normalised edit distance between the read text and the joined targets (normalised as the OCR reward)."""
    a, b = normalize_text(read), normalize_text("".join(targets))
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def ocr_scores(images: Sequence[Image.Image], targets: Sequence[Sequence[str]], ocr: OCRReward | None = None) -> dict:
    """{'word_accuracy', 'ned', 'images', 'failures'} over images with their target texts."""
    return _summary(_ocr_counts(images, targets, ocr or OCRReward()))


def _ocr_counts(images, targets, ocr: OCRReward) -> list[tuple[int, int, float, bool]]:
    """(word hits, target words, NED similarity, OCR failed) per image."""
    counts = []
    for read, texts in zip(ocr.recognize_many(list(images)), targets, strict=True):
        failed = isinstance(read, Exception)
        if failed:
            logger.warning("OCR failed on one image: %s", read)
            read = ""
        words = target_words(texts)
        counts.append((word_hits(read, words), len(words), ned_similarity(read, texts), failed))
    return counts


def _summary(counts: list[tuple[int, int, float, bool]]) -> dict:
    hits, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {"word_accuracy": hits / total if total else float("nan"), "ned": sum(c[2] for c in counts) / len(counts) if counts else float("nan"),
            "images": len(counts), "failures": sum(c[3] for c in counts)}


def clip_score(images: Sequence[Image.Image], prompts: Sequence[str], clip_path: str | Path, device: str = "cpu") -> float:
    """Mean CLIPScore, 2.5 * max(cos, 0), of each image with its prompt."""
    from ..rewards.clip import CLIPReward

    return _clip_score(CLIPReward(clip_path, device=device).similarities(list(images), list(prompts)).tolist())


def _clip_score(cosines: Sequence[float]) -> float:
    return sum(CLIP_SCORE_WEIGHT * max(c, 0.0) for c in cosines) / len(cosines) if cosines else float("nan")


def _open(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def score_folder(bench: Benchmark, out: Path, samples: Sequence[Sample], images_per_prompt: int, *, ocr: bool | OCRReward = True,
                 clip_path: str | Path | None = None, device: str = "cpu", chunk: int = 64) -> dict:
    """Score the written images of `samples` in `out`: OCR metrics for CVTG-2K (`ocr`: True or an `OCRReward` to
    use), CLIPScore for any text-to-image benchmark given a CLIP folder. Images are read `chunk` at a time;
    missing ones are counted, not scored."""
    pairs = [(s, out / name) for s in samples for name in bench.files(s, images_per_prompt) if name.endswith(".png")]
    present = [(s, p) for s, p in pairs if p.is_file()]
    scores: dict = {"benchmark": bench.name, "images": len(present), "missing": len(pairs) - len(present)}
    use_ocr = ocr is not False and bench.name == "cvtg"
    reader = (ocr if isinstance(ocr, OCRReward) else OCRReward()) if use_ocr else None
    clip = None
    if clip_path is not None and bench.task == "t2i":
        from ..rewards.clip import CLIPReward

        clip = CLIPReward(clip_path, device=device)
    counts, cosines = [], []
    for start in range(0, len(present), chunk):
        part = present[start : start + chunk]
        images = [_open(p) for _, p in part]
        if reader is not None:
            counts += _ocr_counts(images, [s.meta["targets"] for s, _ in part], reader)
        if clip is not None:
            cosines += clip.similarities(images, [s.prompt for s, _ in part]).tolist()
    if reader is not None:
        scores.update(_summary(counts))
        scores["images"] = len(present)
    if clip is not None:
        scores["clip_score"] = _clip_score(cosines)
    return scores
