"""Image conversion, DeepGen's resize policies and the Qwen2.5-VL patch layout (reference notes §3).

DeepGen does not use the Qwen2-VL image processor: it resizes the [-1, 1] VAE-resolution tensor by 28/32,
normalises with CLIP statistics and patchifies in the processor's layout (notes §3.3). The processor would
apply its own smart-resize and rescale, so the layout is reproduced here from the tensor instead.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .errors import DeepGenInputError
from .user_files import exif_upright

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_UNIT = 32
MIN_REFERENCE_SIDE = 32

ResizePolicy = Literal["dynamic", "fix_pixels", "none"]


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha is composited over white, 16-bit and float data are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or data.max() > 255 else 255.0
        data = np.clip(data / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        logger.info("%s: converted %s data to 8-bit RGB", name, image.mode)
        return Image.fromarray(data).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        logger.info("%s: composited its alpha channel over white", name)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _ceil_to(x: float, unit: int = RESIZE_UNIT) -> int:
    return max(unit, int(math.ceil(x / unit)) * unit)


def target_size(width: int, height: int, policy: ResizePolicy, size: int = 512) -> tuple[int, int]:
    """(width, height) after a reference resize policy (notes §3.2), multiples of 32.

    `dynamic`: the longer side is brought down to `size` if it exceeds it, then both sides are rounded up to 32.
    `fix_pixels`: area ~ size**2 with the aspect kept, both sides rounded up (training data).
    `none`: the size must already be a multiple of 32.
    """
    if policy == "fix_pixels":
        r = size / math.sqrt(width * height)
        return _ceil_to(width * r), _ceil_to(height * r)
    if policy == "dynamic":
        longest = max(width, height)
        if longest >= size:
            r = size / longest
            return _ceil_to(width * r), _ceil_to(height * r)
        return _ceil_to(width), _ceil_to(height)
    if policy == "none":
        if width % RESIZE_UNIT or height % RESIZE_UNIT:
            raise DeepGenInputError(
                f"reference image is {width}x{height}; with resize policy 'none' both sides must be multiples of 32 "
                f"(nearest: {_ceil_to(width)}x{_ceil_to(height)}). Use policy 'dynamic' to resize automatically."
            )
        return width, height
    raise DeepGenInputError(f"unknown resize policy {policy!r}; choose 'dynamic', 'fix_pixels' or 'none'.")


def prepare_reference(image: Image.Image, policy: ResizePolicy = "dynamic", size: int = 512, name: str = "reference image") -> torch.Tensor:
    """PIL image -> (3, H, W) float32 tensor in [-1, 1] at a multiple of 32, as the reference feeds it (§3.1)."""
    if not isinstance(image, Image.Image):
        raise DeepGenInputError(f"{name} must be a PIL image, got {type(image).__name__}.")
    if min(image.size) < MIN_REFERENCE_SIDE:
        raise DeepGenInputError(
            f"{name} is {image.size[0]}x{image.size[1]} px; each side needs at least {MIN_REFERENCE_SIDE} px. "
            "Upscale it or pass a larger image."
        )
    image = to_rgb(exif_upright(image), name)  # a phone photo's EXIF rotation (ComfyUI's LoadImage applies it already)
    w, h = target_size(*image.size, policy=policy, size=size)
    if (w, h) != image.size:
        image = image.resize((w, h), Image.BICUBIC)  # PIL's default filter for RGB, as the reference uses
    return pil_to_tensor(image)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> (3, H, W) float32 in [-1, 1]."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float().div(255.0).mul(2.0).sub(1.0)


def tensor_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 with the reference's rounding: clamp(127.5 x + 128) truncated."""
    return (images.float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def vit_patches(
    pixels: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened Qwen2.5-VL vision patches of one reference (notes §3.3).

    Args:
        pixels: (3, H, W) in [-1, 1], H and W multiples of 32.

    Returns:
        patches (N, 3 * temporal * patch * patch), rows in 2x2-merge-window order, columns (channel, temporal,
        y, x); and grid_thw (1, 3) = (1, H'/14, W'/14) with H' = 28/32 H.
    """
    x = F.interpolate(pixels[None], scale_factor=28 / 32, mode="bilinear", align_corners=False)[0]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)[:, None, None]
    x = ((x + 1) / 2 - mean) / std
    c, h, w = x.shape
    gh, gw = h // patch_size, w // patch_size
    frames = x[None].expand(temporal_patch_size, -1, -1, -1)  # a still image is its own second frame
    frames = frames.reshape(temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    patches = frames.permute(2, 5, 3, 6, 1, 0, 4, 7).reshape(gh * gw, c * temporal_patch_size * patch_size**2)
    grid = torch.tensor([[1, gh, gw]], dtype=torch.long, device=pixels.device)
    return patches, grid


def channels_last_to_pil(images: torch.Tensor, name: str = "image") -> list[Image.Image]:
    """(B, H, W, C) float images in [0, 1] (ComfyUI's IMAGE) -> B RGB PIL images, rounding to the nearest level so
    that 8-bit images round-trip exactly. A 4th (alpha) channel is composited over white like `to_rgb`."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DeepGenInputError(f"{name} must be a (batch, height, width, channels) image tensor, got shape {tuple(images.shape)}.")
    if images.shape[0] == 0:
        raise DeepGenInputError(f"{name} is an empty batch; connect at least one image.")
    array = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    return [to_rgb(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a, modes[a.shape[-1]]), name) for a in array]


def to_channels_last(pixels: torch.Tensor) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) in [0, 1] (ComfyUI's IMAGE)."""
    pixels = pixels[None] if pixels.ndim == 3 else pixels
    return ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def captioned_grid(images: list[Image.Image], captions: list[str], columns: int | None = None) -> Image.Image:
    """Images in a grid (`columns` per row, default all in one row), each with its caption lines underneath."""
    columns = columns or len(images)
    width, height = images[0].size
    font = ImageFont.load_default()
    lines = max(len(c.splitlines()) for c in captions)
    caption_height = 12 * lines + 8
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (width * columns, (height + caption_height) * rows), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * width, (i // columns) * (height + caption_height)
        grid.paste(image.convert("RGB").resize((width, height)), (x, y))
        draw.multiline_text((x + 4, y + height + 4), caption, fill="black", font=font, spacing=2)
    return grid
