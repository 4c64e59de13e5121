"""DPG-Bench: one prompt per `prompts/<id>.txt` (ELLA's dpg_bench); the scorer (`dpg_bench/compute_dpg_bench.py
--image-root-path DIR --resolution R --pic-num 4`) reads `DIR/<id>.png`, a 2x2 grid of R x R images cropped in
row-major order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .base import Benchmark, Sample, bad_data, check_nonempty, quoted, read_text, save_png

HINT = "Point --data at DPG-Bench's prompts folder (dpg_bench/prompts in github.com/TencentQQGYLab/ELLA), one <id>.txt per prompt."


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    if not data.is_dir():
        raise bad_data(data, "expected the folder of <id>.txt prompt files" if data.exists() else "no such folder", HINT)
    samples = []
    for path in sorted(data.glob("*.txt")):
        text = read_text(path, HINT).splitlines()
        if not text or not text[0].strip():
            raise bad_data(path, "the prompt file is empty", HINT)
        samples.append(Sample(path.stem, text[0].strip()))
    return check_nonempty(samples, data, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"{sample.key}.png"]


def grid(images: Sequence[Image.Image]) -> Image.Image:
    """1 image as is; 4 as a 2x2 grid, image j at row j // 2, column j % 2 (the scorer's crop order)."""
    if len(images) == 1:
        return images[0]
    w, h = images[0].size
    canvas = Image.new("RGB", (2 * w, 2 * h))
    for j, image in enumerate(images):
        canvas.paste(image, ((j % 2) * w, (j // 2) * h))
    return canvas


def write(out: Path, sample: Sample, images: Sequence[Image.Image]) -> None:
    save_png(grid(images), out / f"{sample.key}.png")


def scorer(out: Path, data: Path, cfg: dict) -> str:
    return f"PIC_NUM={cfg['images_per_prompt']} bash dpg_bench/dist_eval.sh {quoted(out)} {cfg['height']}"


BENCHMARK = Benchmark(
    name="dpg", title="DPG-Bench", task="t2i", read=read, files=files, write=write, data_hint=HINT, scorer=scorer,
    paper={"RL": 87.90, "SFT": 87.05}, images_per_prompt=4, guidance_scale=7.5, batch_size=16, allowed_images_per_prompt=(1, 4),
)
