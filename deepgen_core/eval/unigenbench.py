"""UniGenBench: `data/test_prompts_en.csv` (columns `index`, `prompt_en`, ...; the Chinese files have `prompt_zh`);
the scorer (`eval/src/offline_model_en_eval.py --data_path DIR --csv_file CSV`) reads `DIR/<index>_<j>.png`."""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, Sample, bad_data, check_nonempty, find_file, load_csv, quoted

HINT = "Point --data at UniGenBench's data/test_prompts_en.csv (github.com/CodeGoat24/UniGenBench), columns 'index' and 'prompt_en'."
PROMPT_COLUMNS = ("prompt_en", "prompt_zh", "prompt")


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    path = find_file(data, ["test_prompts_en.csv"], HINT)
    rows = load_csv(path, HINT)
    header = list(rows[0]) if rows else []
    column = next((c for c in PROMPT_COLUMNS if c in header), None)
    if "index" not in header or column is None:
        raise bad_data(path, f"the CSV header {header} lacks 'index' or a prompt column {list(PROMPT_COLUMNS)}", HINT)
    samples = []
    for number, row in enumerate(rows, 2):
        try:
            key = str(int(float(row["index"])))
        except (TypeError, ValueError):
            raise bad_data(path, f"row {number}: index {row['index']!r} is not a number", HINT) from None
        samples.append(Sample(key, (row[column] or "").strip()))
    return check_nonempty(samples, path, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"{sample.key}_{j}.png" for j in range(n)]


def scorer(out: Path, data: Path, cfg: dict) -> str:
    return (f"python eval/src/offline_model_en_eval.py --data_path {quoted(out)} --csv_file {quoted(data)} --category en "
            f"--api_url http://localhost:8080 --images_per_prompt {cfg['images_per_prompt']}  # with the UniGenBench-EvalModel vLLM server running")


BENCHMARK = Benchmark(
    name="unigenbench", title="UniGenBench", task="t2i", read=read, files=files, data_hint=HINT, scorer=scorer,
    paper={"RL": 75.74, "SFT": 74.18}, images_per_prompt=4, batch_size=16,
)
