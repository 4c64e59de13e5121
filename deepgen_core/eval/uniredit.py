"""UniREditBench: `data.json`, a list of objects with `original_image_path` (relative to the JSON's folder),
`instruction`, `name` (the dimension), `idx` and, for game-world samples, `rules` (prepended to the instruction, as the
benchmark's own generation script does); the scorer (`eval/gpt_eval_uniredit.py --input DATA_DIR --data JSON
--output DIR`) reads `DIR/<name>/<idx>.png`."""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, Sample, bad_data, check_nonempty, find_file, image_opener, load_json, quoted, require

HINT = ("Point --data at the UniREditBench folder or its data.json (the UniREditBench dataset), a list of "
        "{'original_image_path', 'instruction', 'name', 'idx'}.")


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    path = find_file(data, ["data.json"], HINT)
    rows = load_json(path, HINT)
    if not isinstance(rows, list):
        raise bad_data(path, f"expected a JSON list of samples, got a {type(rows).__name__}", HINT)
    root = image_root or path.parent
    samples = []
    for number, row in enumerate(rows):
        require(row, ["original_image_path", "instruction", "name", "idx"], f"entry {number}", path, HINT)
        prompt = row["instruction"].strip()
        if row.get("rules"):
            prompt = f"{row['rules']} {prompt}"
        opener = image_opener(root / row["original_image_path"], path, HINT)
        samples.append(Sample(f"{row['name']}/{row['idx']}", prompt, opener, {"name": str(row["name"]), "idx": str(row["idx"])}))
    return check_nonempty(samples, path, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"{sample.meta['name']}/{sample.meta['idx']}.png"]


def scorer(out: Path, data: Path, cfg: dict) -> str:
    path = find_file(data, ["data.json"], HINT)
    return f"python -u eval/gpt_eval_uniredit.py --input {quoted(path.parent)} --data {quoted(path)} --output {quoted(out)} --nproc 6"


BENCHMARK = Benchmark(
    name="uniredit", title="UniREditBench", task="edit", read=read, files=files, data_hint=HINT, scorer=scorer,
    paper={"RL": 75.7, "SFT": 77.5}, batch_size=4, allowed_images_per_prompt=(1,),
)
