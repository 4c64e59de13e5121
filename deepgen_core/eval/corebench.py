"""T2I-CoReBench: `data/<dimension>.json` files (C-MI, ..., R-RR), each mapping an ID such as `C-MI-001` to an object
with `Prompt`; the scorer (`evaluate.py --model NAME --output_path ROOT --gen_eval_file DIMS`) reads
`ROOT/NAME/<dimension>/<ID>-<j>.png`, so `--out` is `ROOT/NAME`. A JSONL export with `ID` and `Prompt` per line
(the reference's input) is read too."""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, Sample, bad_data, check_nonempty, load_json, load_jsonl, quoted, require

HINT = "Point --data at T2I-CoReBench's data folder (github.com/KwaiVGI/T2I-CoReBench) of <dimension>.json files mapping IDs to {'Prompt': ...}."


def _rows(path: Path) -> list[tuple[str, dict]]:
    if path.suffix == ".jsonl":
        rows = load_jsonl(path, HINT)
        for number, row in enumerate(rows, 1):
            require(row, ["ID", "Prompt"], f"line {number}", path, HINT)
        return [(str(row["ID"]), row) for row in rows]
    table = load_json(path, HINT)
    if not isinstance(table, dict):
        raise bad_data(path, f"expected a JSON object mapping IDs to prompts, got a {type(table).__name__}", HINT)
    for key, row in table.items():
        require(row, ["Prompt"], f"entry {key!r}", path, HINT)
    return list(table.items())


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    if not data.exists():
        raise bad_data(data, "no such file or folder", HINT)
    paths = sorted(data.glob("*.json")) if data.is_dir() else [data]
    samples = []
    for path in paths:
        for key, row in _rows(path):
            if len(key.split("-")) < 3:
                raise bad_data(path, f"ID {key!r} is not of the form <C|R>-<DIM>-<number>", HINT)
            samples.append(Sample(key, str(row["Prompt"]).strip()))
    return check_nonempty(samples, data, HINT)


def dimension(key: str) -> str:
    return "-".join(key.split("-")[:2])


def files(sample: Sample, n: int) -> list[str]:
    return [f"{dimension(sample.key)}/{sample.key}-{j}.png" for j in range(n)]


def scorer(out: Path, data: Path, cfg: dict) -> str:
    return (f"python evaluate.py --model {quoted(Path(out.name))} --output_path {quoted(out.parent)} --mllm Qwen2_5_VL_72B "
            '--gen_eval_file "C-MI, C-MA, C-MR, C-TR, R-LR, R-BR, R-HR, R-PR, R-GR, R-AR, R-CR, R-RR"')


BENCHMARK = Benchmark(
    name="corebench", title="T2I-CoReBench", task="t2i", read=read, files=files, data_hint=HINT, scorer=scorer,
    paper={"RL": 46.5, "SFT": 45.7}, images_per_prompt=4, batch_size=16,
)
