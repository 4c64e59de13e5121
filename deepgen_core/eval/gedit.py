"""GEdit-Bench: the Hugging Face dataset `stepfun-ai/GEdit-Bench` as published (`data/*.parquet`) or as saved by
`datasets.save_to_disk` (`*.arrow`), columns `key`, `task_type`, `instruction`, `instruction_language` and
`input_image` ({bytes, path}); read with pyarrow. The scorer (`test_gedit_score.py --model_name NAME --save_path ROOT`)
reads `ROOT/NAME/fullset/<task_type>/<language>/<key>.png` next to the source `<key>_SRCIMG.png`, so `--out` is
`ROOT/NAME`. Both languages are written (the scorer walks every row); the paper reports the English ones."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .base import Benchmark, Sample, bad_data, check_nonempty, quoted, save_png

HINT = ("Point --data at a local copy of the GEdit-Bench dataset (its data/*.parquet files, or a datasets.save_to_disk "
        "folder); reading it needs pyarrow (pip install pyarrow).")
COLUMNS = ("key", "task_type", "instruction", "instruction_language", "input_image")


def _tables(data: Path):
    try:
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise bad_data(data, "reading the GEdit-Bench dataset needs pyarrow, which is not installed", HINT) from None
    if not data.exists():
        raise bad_data(data, "no such file or folder", HINT)
    parquet = [data] if data.suffix == ".parquet" else sorted(data.rglob("*.parquet"))
    arrow = [] if parquet else sorted(data.rglob("*.arrow"))
    if not parquet and not arrow:
        raise bad_data(data, "holds no .parquet or .arrow files", HINT)
    for path in parquet:
        try:
            yield path, pyarrow.parquet.read_table(path, columns=list(COLUMNS))
        except (pyarrow.ArrowInvalid, KeyError) as exc:
            raise bad_data(path, f"not a GEdit-Bench parquet file ({exc})", HINT) from exc
    for path in arrow:
        with pyarrow.memory_map(str(path)) as source:
            try:
                yield path, pyarrow.ipc.open_stream(source).read_all()
            except pyarrow.ArrowInvalid as exc:
                raise bad_data(path, f"not an Arrow stream file ({exc})", HINT) from exc


def _opener(cell: dict, path: Path):
    raw = cell.get("bytes") if isinstance(cell, dict) else None
    if not raw:
        raise bad_data(path, "an input_image cell carries no image bytes", HINT)

    def open_image() -> Image.Image:
        with Image.open(io.BytesIO(raw)) as img:
            return img.convert("RGB")

    return open_image


def read(data: Path, image_root: Path | None = None) -> list[Sample]:
    samples = []
    for path, table in _tables(data):
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise bad_data(path, f"lacks the column(s) {missing} (it has {table.column_names})", HINT)
        for row in table.select(list(COLUMNS)).to_pylist():
            meta = {"task_type": row["task_type"], "language": row["instruction_language"]}
            key = f"{row['task_type']}/{row['instruction_language']}/{row['key']}"
            samples.append(Sample(key, row["instruction"].strip(), _opener(row["input_image"], path), meta))
    return check_nonempty(samples, data, HINT)


def files(sample: Sample, n: int) -> list[str]:
    return [f"fullset/{sample.key}_SRCIMG.png", f"fullset/{sample.key}.png"]


def write(out: Path, sample: Sample, images: Sequence[Image.Image]) -> None:
    source, edited = files(sample, 1)
    save_png(sample.reference(), out / source)
    save_png(images[0], out / edited)  # last: marks the sample done


def scorer(out: Path, data: Path, cfg: dict) -> str:
    return (f"python test_gedit_score.py --model_name {quoted(Path(out.name))} --save_path {quoted(out.parent)} --backbone gpt4o "
            f"&& python calculate_statistics.py --model_name {quoted(Path(out.name))} --save_path {quoted(out.parent)} --backbone gpt4o --language en")


BENCHMARK = Benchmark(
    name="gedit", title="GEdit-Bench (EN)", task="edit", read=read, files=files, write=write, data_hint=HINT, scorer=scorer,
    paper={"RL": 7.17, "SFT": 7.12}, batch_size=4, allowed_images_per_prompt=(1,),
)
