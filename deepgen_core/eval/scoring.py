"""Scores computed here, with nothing beyond the project's own dependencies:

- CVTG-2K word accuracy and NED from the offline OCR engine of the OCR reward (rapidocr, PP-OCR models). Word
  accuracy: the share of target words (lower-cased, spaces and surrounding punctuation removed) found in the text
  read from their image, each read occurrence used once. NED: 1 - edit distance / longer length between the read
  text and the targets joined, averaged over images. The paper's numbers come from the benchmark's PP-OCR script,
  so ours are comparable in kind, not bit for bit.
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
    ocr = ocr or OCRReward()
    hits = total = failures = 0
    neds = []
    for read, texts in zip(ocr.recognize_many(list(images)), targets, strict=True):
        words = target_words(texts)
        if isinstance(read, Exception):
            failures += 1
            logger.warning("OCR failed on one image: %s", read)
            read = ""
        hits += word_hits(read, words)
        total += len(words)
        neds.append(ned_similarity(read, texts))
    return {"word_accuracy": hits / total if total else float("nan"), "ned": sum(neds) / len(neds) if neds else float("nan"),
            "images": len(neds), "failures": failures}


def clip_score(images: Sequence[Image.Image], prompts: Sequence[str], clip_path: str | Path, device: str = "cpu") -> float:
    """Mean CLIPScore, 2.5 * max(cos, 0), of each image with its prompt."""
    from ..rewards.clip import CLIPReward

    cos = CLIPReward(clip_path, device=device).similarities(list(images), list(prompts))
    return float((CLIP_SCORE_WEIGHT * cos.clamp(min=0)).mean()) if len(cos) else float("nan")


def _open(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def score_folder(bench: Benchmark, out: Path, samples: Sequence[Sample], images_per_prompt: int, *, ocr: bool = True,
                 clip_path: str | Path | None = None, device: str = "cpu") -> dict:
    """Score the written images of `samples` in `out`: OCR metrics for CVTG-2K, CLIPScore for any text-to-image
    benchmark given a CLIP folder. Missing images are counted, not scored."""
    pairs = [(s, out / name) for s in samples for name in bench.files(s, images_per_prompt) if name.endswith(".png")]
    present = [(s, p) for s, p in pairs if p.is_file()]
    scores: dict = {"benchmark": bench.name, "images": len(present), "missing": len(pairs) - len(present)}
    if ocr and bench.name == "cvtg":
        scores.update(ocr_scores([_open(p) for _, p in present], [s.meta["targets"] for s, _ in present]))
    if clip_path is not None and bench.task == "t2i":
        scores["clip_score"] = clip_score([_open(p) for _, p in present], [s.prompt for s, _ in present], clip_path, device)
    return scores
