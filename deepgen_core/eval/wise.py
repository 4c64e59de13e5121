"""WISE: `data/<category>.json` files, each a list of objects with `prompt_id` and `Prompt` (the original release
and WISE_Verified alike); the scorers (`gpt_eval.py --image_dir DIR`, `vllm_eval.py`) read `DIR/<prompt_id>.png`.
`--data` may name one file or the folder holding all three."""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, Sample, bad_data, check_nonempty, load_json, quoted, require

HINT = "Point --data at WISE's data folder or one of its JSON files (github.com/PKU-YuanGroup/WISE), lists of objects with 'prompt_id' and 'Prompt'."


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    if not data.exists():
        raise bad_data(data, "no such file or folder", HINT)
    # a folder: every category file, not the merged copy or the legacy release's rewritten prompts (same ids)
    paths = sorted(p for p in data.glob("*.json") if p.name != "merge.json" and not p.stem.endswith("_rewrite")) if data.is_dir() else [data]
    samples = []
    for path in paths:
        rows = load_json(path, HINT)
        if not isinstance(rows, list):
            raise bad_data(path, f"expected a JSON list of prompts, got a {type(rows).__name__}", HINT)
        for number, row in enumerate(rows):
            require(row, ["prompt_id", "Prompt"], f"entry {number}", path, HINT)
            samples.append(Sample(str(row["prompt_id"]), row["Prompt"].strip()))
    return check_nonempty(samples, data, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"{sample.key}.png"]


def scorer(out: Path, data: Path, cfg: dict) -> str:
    return (f"python gpt_eval.py --json_path <data/CATEGORY.json> --image_dir {quoted(out)} --output_dir {quoted(out / 'Results')}/CATEGORY "
            "--api_key <key> --model gpt-4o-2024-05-13  # once per category, then Calculate.py (WISE_legacy)")


BENCHMARK = Benchmark(
    name="wise", title="WISE", task="t2i", read=read, files=files, data_hint=HINT, scorer=scorer,
    paper={"RL": 0.73, "SFT": 0.72}, images_per_prompt=1, batch_size=16, allowed_images_per_prompt=(1,),
)
