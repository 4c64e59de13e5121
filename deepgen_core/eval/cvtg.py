"""CVTG-2K: `CVTG/<n>.json` and `CVTG-Style/<n>.json` (n = 2..5 text regions), each `{"data_list": [{"index",
"prompt", "sentence_list", "carrier_list", ...}]}`; the benchmark's scripts write `<subset>/<n>/<index>.png`.
Word accuracy, NED and CLIPScore are computed here (`deepgen_core.eval.scoring`)."""

from __future__ import annotations

import re
from pathlib import Path

from .base import Benchmark, Sample, bad_data, check_nonempty, load_json, require

HINT = ("Point --data at the extracted CVTG-2K folder (CVTG-2K.zip of the CVTG-2K dataset), holding CVTG/ and "
        "CVTG-Style/ with 2.json ... 5.json ({'data_list': [{'index', 'prompt', ...}]}).")
AREAS = range(2, 6)
_QUOTED = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d')  # straight or typographic quotes


def _subsets(data: Path) -> list[Path]:
    if not data.is_dir():
        raise bad_data(data, "expected the CVTG-2K folder" if data.exists() else "no such folder", HINT)
    found = sorted(p for p in data.iterdir() if p.is_dir() and p.name.lower() in ("cvtg", "cvtg-style"))
    if not found:
        raise bad_data(data, f"holds neither CVTG/ nor CVTG-Style/ (it has {sorted(p.name for p in data.iterdir())[:10]})", HINT)
    return found


def targets(row: dict) -> list[str]:
    """The texts a CVTG image must show: `sentence_list` when given, else the prompt's quoted segments."""
    listed = row.get("sentence_list")
    if isinstance(listed, list) and listed:
        return [str(t) for t in listed]
    return [a or b for a, b in _QUOTED.findall(row["prompt"])]


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    samples = []
    for subset in _subsets(data):
        for area in AREAS:
            path = subset / f"{area}.json"
            if not path.is_file():
                continue
            table = load_json(path, HINT)
            rows = table.get("data_list") if isinstance(table, dict) else None
            if not isinstance(rows, list):
                raise bad_data(path, "expected an object with a 'data_list' list", HINT)
            for number, row in enumerate(rows):
                require(row, ["index", "prompt"], f"data_list[{number}]", path, HINT)
                meta = {"subset": subset.name, "area": area, "index": row["index"], "targets": targets(row)}
                samples.append(Sample(f"{subset.name}/{area}/{row['index']}", row["prompt"].strip(), meta=meta))
    return check_nonempty(samples, data, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"{sample.key}.png"]


def scorer(out: Path, data: Path, cfg: dict) -> str:
    return f"deepgen eval cvtg --data {data} --out {out} --score --clip <local CLIP ViT-L/14 folder>"


BENCHMARK = Benchmark(
    name="cvtg", title="CVTG-2K", task="t2i", read=read, files=files, data_hint=HINT, scorer=scorer,
    paper={"word_accuracy": 0.7533, "ned": 0.8936, "clip_score": 0.8278}, batch_size=16, allowed_images_per_prompt=(1,),
)
