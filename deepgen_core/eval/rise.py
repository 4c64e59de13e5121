"""RISEBench: a JSON list (`data/data_total.json`; the full release's `datav2_total_w_subtask.json`) of objects with
`index`, `category`, `instruction` and `image` (relative to the JSON's folder); the scorer (`gpt_eval.py --data JSON
--input DATA_DIR --output DIR`) reads `DIR/images/<category>/<index>.png`."""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, Sample, bad_data, check_nonempty, find_file, image_opener, load_json, quoted, require

HINT = ("Point --data at the RISEBench folder or its JSON (datav2_total_w_subtask.json of the RISEBench dataset, or "
        "data/data_total.json of github.com/PhoenixZ810/RISEBench), a list of {'index', 'category', 'instruction', 'image'}.")
NAMES = ["datav2_total_w_subtask.json", "data_total.json"]


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    path = find_file(data, NAMES, HINT)
    rows = load_json(path, HINT)
    if not isinstance(rows, list):
        raise bad_data(path, f"expected a JSON list of samples, got a {type(rows).__name__}", HINT)
    root = image_root or path.parent
    samples = []
    for number, row in enumerate(rows):
        require(row, ["index", "category", "instruction", "image"], f"entry {number}", path, HINT)
        samples.append(Sample(str(row["index"]), row["instruction"].strip(), image_opener(root / row["image"], path, HINT), {"category": row["category"]}))
    return check_nonempty(samples, path, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"images/{sample.meta['category']}/{sample.key}.png"]


def scorer(out: Path, data: Path, cfg: dict) -> str:
    path = find_file(data, NAMES, HINT)
    return f"python gpt_eval.py --data {quoted(path)} --input {quoted(path.parent)} --output {quoted(out)}"


BENCHMARK = Benchmark(
    name="rise", title="RISEBench", task="edit", read=read, files=files, data_hint=HINT, scorer=scorer,
    paper={"RL": 10.8, "SFT": 13.3}, batch_size=4, allowed_images_per_prompt=(1,),
)
