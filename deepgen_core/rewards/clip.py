"""CLIP text-image similarity (reference notes §6.5: OpenAI CLIP ViT-L/14, captions truncated to 77 tokens)."""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from PIL import Image

from ..errors import CheckpointError
from .base import RewardOutput, check_batch


class CLIPReward:
    """Cosine similarity of L2-normalised CLIP text and image features, loaded from a local folder only.

    Example::

        CLIPReward("/models/clip-vit-large-patch14", device="cuda")(images, prompts).scores
    """

    name = "clip_sim"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 32) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise CheckpointError(f"CLIP reward: {str(self.path)!r} is not a transformers CLIP folder (no config.json); download openai/clip-vit-large-patch14 there first.")
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self._parts = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._parts is None:
                from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

                model = CLIPModel.from_pretrained(self.path, local_files_only=True, torch_dtype=self.dtype).to(self.device).eval()
                tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
                self._parts = (model, tokenizer, processor)
            return self._parts

    @torch.no_grad()
    def similarities(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        """(N,) fp32 cosine similarities of image i with text i."""
        model, tokenizer, processor = self._load()
        max_len = min(getattr(tokenizer, "model_max_length", 77), model.config.text_config.max_position_embeddings)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk_images, chunk_texts = images[start : start + self.batch_size], texts[start : start + self.batch_size]
            tokens = tokenizer(chunk_texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(self.device)
            pixels = processor(images=[i.convert("RGB") for i in chunk_images], return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            text = model.get_text_features(**tokens)
            image = model.get_image_features(pixel_values=pixels)
            text = getattr(text, "pooler_output", text)
            image = getattr(image, "pooler_output", image)
            text = torch.nn.functional.normalize(text.float(), dim=-1)
            image = torch.nn.functional.normalize(image.float(), dim=-1)
            out.append((text * image).sum(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, images: list[Image.Image], prompts: list[str], **metadata) -> RewardOutput:
        check_batch(images, prompts, self.name)
        scores = [float(s) for s in self.similarities(list(images), list(prompts))]
        return RewardOutput(scores=scores, details=[f"clip {s:.4f}" for s in scores])
