"""Images for the tiny-VAE trainer: every image of the index files, decoded once into one uint8 tensor.

The records are read by the stage-1/2 readers (`data.SourceDataset`: caption_json, blip3o, edit, tar), so a
dataset written for DeepGen trains its VAE too; an edit record gives its output and all its input images.
30k images of 128x128 take 1.5 GB, so the whole set lives on the training device and a batch is one gather:
no DataLoader, no per-step host work.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from ..errors import DeepGenInputError
from ..image_processing import pil_to_tensor, to_rgb
from .config import DataConfig, SourceConfig
from .data import SampleError, SourceDataset

logger = logging.getLogger(__name__)


def square_uint8(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> (3, size, size) uint8: shorter side resized to `size` (antialiased), centre crop.

    Args:
        pixels: one image in [-1, 1] (as `pil_to_tensor` returns it).
        size: output side.
    """
    _, h, w = pixels.shape
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (new_h - size) // 2, (new_w - size) // 2
        pixels = pixels[:, top : top + size, left : left + size]
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class _NativeSizeSource(SourceDataset):
    """A source whose images keep their stored size (`square_uint8` makes them square afterwards)."""

    def _image(self, shard: int | None, name: str) -> torch.Tensor:
        return pil_to_tensor(to_rgb(self.decode_image(shard, name), name))


def _record_images(dataset: SourceDataset, index: int, size: int) -> list[torch.Tensor]:
    try:
        sample = dataset[index]
    except SampleError as exc:
        logger.warning("skipping record %d of %r: %s", index, dataset.source.name, exc)
        return []
    images = [sample["pixel_values"], *sample.get("pixel_values_src", [])]
    return [square_uint8(image, size) for image in images]


def load_images(sources: list[SourceConfig], size: int, max_images: int | None = None, workers: int = 8,
                per_source: int | None = None) -> torch.Tensor:
    """Decode every image of `sources` into one (N, 3, size, size) uint8 tensor (CPU).

    Args:
        sources: index files in the stage-1/2 formats.
        size: side of the square training images.
        max_images: stop after this many images (None: all).
        workers: decoding threads (PIL releases the GIL while decoding).
        per_source: at most this many images from each source (None: all), so a large source does not
            dominate the mix (e.g. 64k edit records give 128k images).
    Raises:
        DeepGenInputError: when no source yields an image.
    """
    data = DataConfig(max_references=None)  # every input image of an edit record
    images: list[torch.Tensor] = []
    for source in sources:
        dataset = _NativeSizeSource(source, data)
        caps = [n for n in (per_source, None if max_images is None else max_images - len(images)) if n is not None]
        cap = min(caps) if caps else None  # images still wanted from this source
        # Every record gives at least one image: never decode more records than images still wanted.
        count = len(dataset) if cap is None else min(len(dataset), cap)
        taken: list[torch.Tensor] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for record_images in pool.map(lambda i, d=dataset: _record_images(d, i, size), range(count)):
                taken.extend(record_images)
                if cap is not None and len(taken) >= cap:
                    break
        images.extend(taken if cap is None else taken[:cap])
        logger.info("source %r: %d images so far", source.name, len(images))
        if max_images is not None and len(images) >= max_images:
            break
    if not images:
        raise DeepGenInputError(f"the VAE data sources {[s.path for s in sources]} hold no readable image; check the index files and image_root.")
    return torch.stack(images)
