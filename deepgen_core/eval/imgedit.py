"""ImgEdit-Bench (single-turn): `Benchmark/singleturn/singleturn.json` (`Basic/basic_edit.json` in the code
repository) maps a key to `{"id": <source image path>, "prompt": ..., "edit_type": ...}`, image paths relative to
the JSON's folder; the scorer (`basic_bench.py --result_img_folder DIR --edit_json JSON --origin_img_root ROOT`)
reads `DIR/<key>.png`."""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, Sample, bad_data, check_nonempty, find_file, image_opener, load_json, quoted, require

HINT = ("Point --data at ImgEdit's Benchmark/singleturn folder or its singleturn.json (Benchmark.tar of the ImgEdit "
        "dataset), a JSON object mapping keys to {'id', 'prompt', 'edit_type'}.")


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    path = find_file(data, ["singleturn.json", "basic_edit.json"], HINT)
    table = load_json(path, HINT)
    if not isinstance(table, dict):
        raise bad_data(path, f"expected a JSON object mapping keys to edits, got a {type(table).__name__}", HINT)
    root = image_root or path.parent
    samples = []
    for key, row in table.items():
        require(row, ["id", "prompt"], f"entry {key!r}", path, HINT)
        samples.append(Sample(str(key), row["prompt"].strip(), image_opener(root / row["id"], path, HINT), {"edit_type": row.get("edit_type")}))
    return check_nonempty(samples, path, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"{sample.key}.png"]


def scorer(out: Path, data: Path, cfg: dict) -> str:
    root = data if data.is_dir() else data.parent
    return (f"python Benchmark/Basic/basic_bench.py --result_img_folder {quoted(out)} --edit_json {quoted(find_file(data, ['singleturn.json', 'basic_edit.json'], HINT))} "
            f"--origin_img_root {quoted(root)} --prompts_json Benchmark/Basic/prompts.json  # then step1_get_avgscore.py, step2_typescore.py")


BENCHMARK = Benchmark(
    name="imgedit", title="ImgEdit", task="edit", read=read, files=files, data_hint=HINT, scorer=scorer,
    paper={"RL": 4.14, "SFT": 4.09}, batch_size=4, allowed_images_per_prompt=(1,),
)
