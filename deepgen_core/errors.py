"""Errors raised at the API boundary, with the input named and the fix spelled out."""

from __future__ import annotations


class DeepGenInputError(ValueError):
    """A user-supplied argument (prompt, size, image, steps, ...) is invalid; the message says how to fix it."""


class CheckpointError(ValueError):
    """A model file or folder is missing, of the wrong kind, or does not fit the model it is loaded into."""


class GenerationError(RuntimeError):
    """Generation finished denoising but could not produce images (non-finite latents, a failed decode). `latents`
    holds the denoised latents (B, 16, h, w) in the DiT's scaled space, so that the compute is not lost."""

    def __init__(self, message: str, latents=None) -> None:
        super().__init__(message)
        self.latents = latents


class TrainingError(RuntimeError):
    """A training run cannot go on (e.g. no reward was scored for several steps); the message says what to check."""
