"""Encode the training set once: the frozen VAE's posterior and the frozen vision tower's tokens of every image.

Stages 1 and 2 never train the VAE or the vision tower (reference notes §1.8), so what they make of an image
depends on the image alone. With `data.cache_latents: true` the trainer encodes every sample of every source
once, before the first step, under the training autocast, and keeps the encodings on the training device; each
step then gathers them instead of decoding, resizing and encoding images. The posterior is kept as (mean, std),
so every step still draws a fresh latent sample: the loss equals the uncached one (tested).

Memory: 8 * C * h * w bytes per image for the posterior (16 channels: 32 KiB at 128 px, 512 KiB at 512 px)
plus the vision tokens of edit references. Meant for small images or small sets (DeepGen-Tiny's 64k images at
128 px take about 2 GiB); every process holds the whole cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..pipeline import ReferenceTokens
from .data import MixedDataset, collate, pack_images, unpack_images
from .sampler import PlannedBatch

logger = logging.getLogger(__name__)


@dataclass
class EncodedSource:
    """Per-sample encodings of one source (index = the source's sample index, retries already resolved)."""

    texts: list[str]
    skipped: list[int]
    mean: list[torch.Tensor]
    std: list[torch.Tensor]
    ref_mean: list[list[torch.Tensor]] | None = None
    ref_std: list[list[torch.Tensor]] | None = None
    ref_tokens: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None  # (tokens (n, H), grid (3,)) per reference


class _SourceItems(torch.utils.data.Dataset):
    def __init__(self, dataset: MixedDataset, source: int) -> None:
        self.dataset, self.source = dataset, source

    def __len__(self) -> int:
        return len(self.dataset.sources[self.source])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[(self.source, index)]


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch = pack_images(collate(samples))
    batch["skipped"] = [s["skipped"] for s in samples]
    return batch


class LatentCache:
    """The encodings of every source of `dataset`, made with `model`'s frozen VAE and vision tower.

    Args:
        dataset: the stage's sources.
        model: the (unwrapped) train model, already on its device.
        autocast: the context manager the training forward runs under (encodings must match it).
        batch_size: images encoded per call.
        num_workers: DataLoader workers that decode the images.
    """

    def __init__(self, dataset: MixedDataset, model, autocast, batch_size: int = 256, num_workers: int = 0) -> None:
        started = time.perf_counter()
        with torch.no_grad(), autocast():
            self.sources = [self._encode(dataset, k, model, batch_size, num_workers) for k in range(len(dataset.sources))]
        total = sum(len(s.texts) for s in self.sources)
        logger.info("latent cache: %d samples of %d sources encoded in %.1f s", total, len(self.sources), time.perf_counter() - started)

    @staticmethod
    def _encode(dataset: MixedDataset, source: int, model, batch_size: int, num_workers: int) -> EncodedSource:
        loader = torch.utils.data.DataLoader(
            _SourceItems(dataset, source), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate)
        pipe = model.pipeline()
        edits = dataset.sources[source].source.task == "image2image"
        out = EncodedSource([], [], [], [], *([[], [], []] if edits else [None] * 3))
        for batch in map(unpack_images, loader):
            out.texts += batch["texts"]
            out.skipped += batch["skipped"]
            mean, std = model.posterior(batch["pixel_values"])
            out.mean += mean
            out.std += std
            refs = batch.get("pixel_values_src")
            if refs is None:
                continue
            flat_mean, flat_std = model.posterior([r for rs in refs for r in rs])
            tokens = pipe.encode_reference_tokens(refs)
            per_image = torch.split(tokens.embeds, [c for counts in tokens.counts for c in counts])
            k = 0
            for rs in refs:
                span = range(k, k + len(rs))
                out.ref_mean.append([flat_mean[j] for j in span])
                out.ref_std.append([flat_std[j] for j in span])
                out.ref_tokens.append([(per_image[j], tokens.grids[j]) for j in span])
                k += len(rs)
        return out

    def batches(self, planned: Iterable[PlannedBatch]) -> Iterator[dict[str, Any]]:
        """The trainer's micro-batches (same keys as the image path, encodings in place of pixels)."""
        for b in planned:
            src, idx = self.sources[b.source], b.sample_indices
            batch: dict[str, Any] = {
                "texts": [src.texts[i] for i in idx], "latent_mean": [src.mean[i] for i in idx], "latent_std": [src.std[i] for i in idx],
                "num_skipped": sum(src.skipped[i] for i in idx), "index": b.index, "task": b.task,
            }
            if src.ref_tokens is not None:
                batch["ref_latent_mean"] = [src.ref_mean[i] for i in idx]
                batch["ref_latent_std"] = [src.ref_std[i] for i in idx]
                tokens = [src.ref_tokens[i] for i in idx]
                batch["ref_tokens"] = ReferenceTokens(
                    torch.cat([t for refs in tokens for t, _ in refs]), torch.stack([g for refs in tokens for _, g in refs]),
                    [[t.shape[0] for t, _ in refs] for refs in tokens])
            yield batch
