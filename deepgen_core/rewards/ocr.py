"""Text-rendering accuracy with an offline OCR engine (rapidocr ships its ONNX models; reference notes §6.5).

Fixes reference bug §9.11: a prompt without quoted text is simply not scored (`None`), and a failure on one image
never zeroes the batch.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from PIL import Image

from .base import RewardOutput, check_batch

logger = logging.getLogger(__name__)

# Straight and typographic double quotes; the reference's old scorer takes the first pair of straight quotes.
_QUOTED = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d')


def extract_target_text(prompt: str) -> str | None:
    """The text an image should show: the first double-quoted segment of `prompt`, or None without one.

    Example: `extract_target_text('a sign saying "OPEN 24h"')` -> `'OPEN 24h'`.
    """
    for match in _QUOTED.finditer(prompt):
        text = match.group(1) if match.group(1) is not None else match.group(2)
        if text.strip():
            return text
    return None


def normalize_text(text: str) -> str:
    """Spaces removed, lower-cased (as the reference's scorer compares)."""
    return "".join(text.split()).lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def text_accuracy(recognized: str, target: str) -> float:
    """1 - d / len(target) with d = 0 when the target appears in the recognised text, else the edit distance
    capped at len(target) (the reference's default scorer), both normalised by `normalize_text`."""
    rec, tgt = normalize_text(recognized), normalize_text(target)
    if not tgt:
        raise ValueError("the OCR target text is empty after removing spaces; quote the text to render.")
    distance = 0 if tgt in rec else min(levenshtein(rec, tgt), len(tgt))
    return 1.0 - distance / len(tgt)


_WORKER_ENGINE = None  # the rapidocr engine of a worker process (`OCRReward(workers > 1)`)


def _build_engine(params: dict):
    from rapidocr import RapidOCR  # heavy import, deferred until the first score

    return RapidOCR(params=params)


def _read(engine, image: Image.Image, use_cls: bool) -> str | Exception:
    """All recognised text lines of `image`, concatenated, or the exception that one image raised."""
    try:
        # A PIL image tells rapidocr the channel order (it converts RGB to its BGR itself).
        return "".join(engine(image.convert("RGB"), use_cls=use_cls).txts or ())
    except (RuntimeError, ValueError, OSError) as exc:  # onnxruntime / decoding errors of one image
        return exc


def _init_worker(params: dict) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = _build_engine(params)


def _read_in_worker(job: tuple[Image.Image, bool]) -> str | Exception:
    return _read(_WORKER_ENGINE, *job)


class OCRReward:
    """OCR accuracy of the quoted prompt text. The engine is built on first use (CPU, offline models).

    Args:
        use_angle_classifier: run rapidocr's 0/180 degree classifier (the reference runs without one).
        workers: with N > 1, the images of a batch are read by N worker processes (spawned, one engine each, one
            operator thread each). RL rewards batches of 64-256 small images: one engine spreading every image over
            all cores is several times slower than N engines side by side (`rewards.options: {ocr: {workers: 8}}`).
        detection_side: the side rapidocr scales an image's shorter side to before text detection (its default
            736). A 128 px tiny-world image read at 320 gives the same words about 4x faster (the RL recipe's
            setting; the held-out evaluation keeps the default).

    Example::

        OCRReward().score_texts([image_with_text], ["HELLO"]).scores  # [1.0] when read correctly
    """

    name = "ocr"

    def __init__(self, use_angle_classifier: bool = False, workers: int = 1, detection_side: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"OCR reward: workers must be >= 1 (processes reading images side by side), got {workers}.")
        if detection_side is not None and detection_side < 32:
            raise ValueError(f"OCR reward: detection_side must be >= 32 px or None (rapidocr's 736), got {detection_side}.")
        self.use_angle_classifier = use_angle_classifier
        self.workers = workers
        self.params: dict = {"Global.log_level": "warning"}
        if detection_side is not None:
            self.params["Det.limit_side_len"] = detection_side
        self._engine = None
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get_engine(self):
        with self._lock:
            if self._engine is None:
                self._engine = _build_engine(self.params)
            return self._engine

    def recognize(self, image: Image.Image) -> str:
        """All recognised text lines of `image`, concatenated (raises what the engine raises)."""
        read = _read(self._get_engine(), image, self.use_angle_classifier)
        if isinstance(read, Exception):
            raise read
        return read

    def recognize_many(self, images: Sequence[Image.Image]) -> list[str | Exception]:
        """The text of each image (read by the worker processes with `workers > 1`); a failed image gives its
        exception instead."""
        if self.workers == 1 or len(images) <= 1:
            return self._read_in_process(images)
        with self._lock:
            if self._pool is None:
                params = {**self.params, "EngineConfig.onnxruntime.intra_op_num_threads": 1, "EngineConfig.onnxruntime.inter_op_num_threads": 1}
                # spawn: forking a process that holds CUDA or torch thread pools is unsafe
                self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(params,))
        jobs = [(image.convert("RGB"), self.use_angle_classifier) for image in images]
        try:
            return list(self._pool.map(_read_in_worker, jobs, chunksize=max(1, len(jobs) // (4 * self.workers))))
        except BrokenProcessPool as exc:  # a worker died (e.g. killed for memory): this batch is read here instead
            logger.warning("an OCR worker process died (%s); reading this batch in-process, new workers next batch", exc)
            self.close()
            return self._read_in_process(images)

    def _read_in_process(self, images: Sequence[Image.Image]) -> list[str | Exception]:
        engine = self._get_engine() if images else None
        return [_read(engine, image, self.use_angle_classifier) for image in images]

    def close(self) -> None:
        """Stop the worker processes (a later batch starts them again)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = None

    def score_texts(self, images: Sequence[Image.Image], targets: Sequence[str | None]) -> RewardOutput:
        """Score each image against an explicit target text (`None` or empty: not scored).

        Args:
            images: N PIL images.
            targets: N target strings (or None).
        """
        if len(images) != len(targets):
            raise ValueError(f"OCR reward: got {len(images)} images but {len(targets)} target texts; pass one target (or None) per image.")
        scores: list[float | None] = []
        details: list[str] = []
        failures = 0
        wanted = [i for i, target in enumerate(targets) if target is not None and normalize_text(target)]
        read = dict(zip(wanted, self.recognize_many([images[i] for i in wanted])))
        for i, target in enumerate(targets):
            if i not in read:
                scores.append(None)
                details.append("no quoted text: not scored")
                continue
            recognized = read[i]
            if isinstance(recognized, Exception):
                logger.warning("OCR failed on one image: %s", recognized)
                failures += 1
                scores.append(None)
                details.append(f"OCR failed: {recognized}")
                continue
            score = text_accuracy(recognized, target)
            scores.append(score)
            details.append(f"read {recognized!r} for {target!r}: {score:.3f}")
        return RewardOutput(scores=scores, details=details, failures=failures)

    def __call__(self, images: list[Image.Image], prompts: list[str], **metadata) -> RewardOutput:
        check_batch(images, prompts, self.name)
        return self.score_texts(images, [extract_target_text(p) for p in prompts])
