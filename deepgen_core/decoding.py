"""Decoding a batch of latents in memory-bounded slices, so that a large batch that has finished denoising is never
lost to one out-of-memory VAE call; a failed decode hands the latents back (`GenerationError.latents`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .errors import GenerationError

logger = logging.getLogger(__name__)

CPU_DECODE_BUDGET = 4 * 2**30  # bytes of decoder activations per slice on the CPU
GPU_DECODE_SHARE = 0.5  # share of the free GPU memory a slice may take
WIDEST_CHANNELS = 128  # the SD3 / TAESD decoders' channel count at full resolution
LIVE_TENSORS = 6  # full-resolution activations alive at once in a decoder block (input, norm, conv, residual, ...)


def decode_slice_size(latents: torch.Tensor, scale: int, dtype: torch.dtype, device: torch.device) -> int:
    """Images per VAE call: the activation estimate of one image against the free memory (GPU) or a fixed budget."""
    pixels = latents.shape[-1] * latents.shape[-2] * scale * scale
    per_image = pixels * WIDEST_CHANNELS * LIVE_TENSORS * torch.finfo(dtype).bits // 8
    budget = CPU_DECODE_BUDGET
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * GPU_DECODE_SHARE)
    return max(1, min(latents.shape[0], budget // max(per_image, 1)))


def decode_in_slices(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, size: int, progress=None) -> torch.Tensor:
    """`decode` over slices of `size` latents (halved after an out-of-memory error), concatenated.

    Raises `GenerationError` carrying `latents` when even one image cannot be decoded or the decoder fails."""
    outputs, start = [], 0
    while start < latents.shape[0]:
        chunk = latents[start : start + size]
        try:
            outputs.append(decode(chunk))
        except torch.OutOfMemoryError as exc:
            if size == 1:
                raise GenerationError("out of memory decoding a single image; the denoised latents are kept (error.latents): "
                                      "decode them with VAE tiling (enable_vae_tiling / --vae-tiling) or on a larger device.", latents) from exc
            size = max(1, size // 2)
            logger.warning("out of memory decoding %d images at once; retrying %d at a time", chunk.shape[0], size)
            if latents.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        except RuntimeError as exc:
            raise GenerationError(f"the VAE failed decoding ({exc}); the denoised latents are kept (error.latents).", latents) from exc
        start += chunk.shape[0]
        if progress is not None:
            progress.update(chunk.shape[0])
    return torch.cat(outputs)
