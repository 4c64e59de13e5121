"""GenEval: prompts from `prompts/evaluation_metadata.jsonl` (one JSON object per line with `tag`, `include`,
`prompt`); the scorer (`evaluation/evaluate_images.py IMAGEDIR`) reads `IMAGEDIR/<5-digit line>/metadata.jsonl` (that
line) and `IMAGEDIR/<5-digit line>/samples/<4-digit>.png`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .base import Benchmark, Sample, check_nonempty, find_file, load_jsonl, quoted, require, save_text, write_files

HINT = "Point --data at GenEval's prompts/evaluation_metadata.jsonl (github.com/djghosh13/geneval), one JSON object with a 'prompt' per line."


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    path = find_file(data, ["evaluation_metadata.jsonl", "geneval_prompt.jsonl"], HINT)
    rows = load_jsonl(path, HINT)
    for number, row in enumerate(rows, 1):
        require(row, ["prompt"], f"line {number}", path, HINT)
    return check_nonempty([Sample(f"{i:05d}", row["prompt"].strip(), meta={"line": row}) for i, row in enumerate(rows)], path, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"{sample.key}/samples/{j:04d}.png" for j in range(n)] + [f"{sample.key}/metadata.jsonl"]


def write(out: Path, sample: Sample, images: Sequence[Image.Image]) -> None:
    write_files(out, files(sample, len(images))[:-1], images)
    save_text(json.dumps(sample.meta["line"]) + "\n", out / sample.key / "metadata.jsonl")  # last: marks it done


def scorer(out: Path, data: Path, cfg: dict) -> str:
    return (f"python evaluation/evaluate_images.py {quoted(out)} --outfile {quoted(out / 'results.jsonl')} --model-path <mask2former folder>"
            f" && python evaluation/summary_scores.py {quoted(out / 'results.jsonl')}")


BENCHMARK = Benchmark(
    name="geneval", title="GenEval", task="t2i", read=read, files=files, write=write, data_hint=HINT, scorer=scorer,
    paper={"RL": 0.87, "SFT": 0.86}, images_per_prompt=4, batch_size=16,
)
