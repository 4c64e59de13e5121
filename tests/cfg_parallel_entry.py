"""Test-only worker for tests/test_cfg_parallel.py under torchrun (gloo, CPU): DeepGen-Tiny with CFG parallelism.

Writes `<out>/rank<r>.safetensors` with the final latents of a text-to-image call (batch 1), a batch of two prompts
and an edit, each with CFG. Never used by the library.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from deepgen_core.parallel.cfg import enable_cfg_parallel
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import deepgen_tiny_dir

STEPS = 6


def generate(pipe: DeepGenPipeline) -> dict[str, torch.Tensor]:
    """The three calls the test compares; `pipe` with or without CFG parallelism."""
    seed = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    t2i = pipe("a large red circle in the center, blue background", num_inference_steps=STEPS, generator=seed(0), output_type="pt")
    batch = pipe(["a small green square on the left, white background", 'the word "CAT" in black letters on a white background'],
                 num_inference_steps=STEPS, generator=seed(1), output_type="latent").latents
    image = (t2i.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    from PIL import Image

    edit = pipe("make the circle green", image=Image.fromarray(image), num_inference_steps=STEPS, generator=seed(2), output_type="latent").latents
    return {"t2i": t2i.latents, "t2i_pixels": t2i.images, "batch": batch, "edit": edit}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    pipe = DeepGenPipeline.from_pretrained(deepgen_tiny_dir(), torch_dtype=torch.float32)
    enable_cfg_parallel(pipe)
    tensors = generate(pipe)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{dist.get_rank()}.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
