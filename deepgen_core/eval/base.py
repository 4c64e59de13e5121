"""What every benchmark module provides: its samples (read from the benchmark's published files) and the files
its official scorer reads (written atomically, so an interrupted run never leaves half a file behind)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..errors import DeepGenInputError

Task = Literal["t2i", "edit"]


@dataclass(frozen=True)
class Sample:
    """One prompt (or edit) of a benchmark.

    Args:
        key: unique id within the benchmark, as the scorer names it (GenEval's line number, DPG's file stem, ...).
        prompt: the text given to the model (UniREditBench: its rules, then the instruction).
        reference: for edits, a function returning the source image (opened only when the sample is generated).
        meta: what the writer needs besides the images (GenEval's metadata line, CVTG's target texts, ...).
    """

    key: str
    prompt: str
    reference: Callable[[], Image.Image] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its reader, its writer and the reference evaluation's defaults for it.

    Args:
        name: the CLI name (`deepgen eval NAME`).
        title: the benchmark's own name.
        task: 't2i' or 'edit' (edits squash the source to the output size, reference notes §3.6).
        read: `read(data_path, image_root) -> list[Sample]`, from the benchmark's published files.
        files: `files(sample, images_per_prompt) -> [relative paths]`: everything the writer makes for a sample;
            a sample whose files all exist is finished (resume).
        images_per_prompt, guidance_scale, batch_size: the reference eval script's settings (notes §4.1).
        data_hint: what `--data` points at and where the benchmark publishes it.
        scorer: `scorer(out_dir, data_path, settings) -> str`, the official scorer's command for a written folder.
        paper: DeepGen 1.0's published scores, {'RL': x, 'SFT': y} (or the metric names for CVTG-2K).
        write: `write(out_dir, sample, images)` with `images_per_prompt` PIL images; by default image i is saved
            as `files(sample, n)[i]` (`write_files`).
    """

    name: str
    title: str
    task: Task
    read: Callable[[Path, Path | None], list[Sample]]
    files: Callable[[Sample, int], list[str]]
    data_hint: str
    scorer: Callable[[Path, Path, dict], str]
    paper: dict[str, float]
    images_per_prompt: int = 1
    guidance_scale: float = 4.0
    batch_size: int = 16
    allowed_images_per_prompt: tuple[int, ...] | None = None
    write: Callable[[Path, Sample, Sequence[Image.Image]], None] | None = None

    def save(self, out: Path, sample: Sample, images: Sequence[Image.Image]) -> None:
        """Write one finished sample: the benchmark's own writer, else one file per image."""
        if self.write is not None:
            self.write(out, sample, images)
        else:
            write_files(out, self.files(sample, len(images)), images)


# ------------------------------------------------------------------------------------------------ reading helpers


def bad_data(path: Path, problem: str, hint: str) -> DeepGenInputError:
    return DeepGenInputError(f"--data {str(path)!r}: {problem}. {hint}")


def find_file(path: Path, names: Sequence[str], hint: str) -> Path:
    """`path` itself when it is a file, else the first of `names` inside the folder `path`."""
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise bad_data(path, f"the folder holds none of {list(names)}", hint)
    raise bad_data(path, "no such file or folder", hint)


def read_text(path: Path, hint: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise bad_data(path, f"not UTF-8 text (byte {exc.start})", hint) from exc


def load_json(path: Path, hint: str) -> Any:
    try:
        return json.loads(read_text(path, hint))
    except json.JSONDecodeError as exc:
        raise bad_data(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", hint) from exc


def load_jsonl(path: Path, hint: str) -> list[dict]:
    rows = []
    for number, line in enumerate(read_text(path, hint).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad_data(path, f"line {number} is not valid JSON ({exc.msg})", hint) from exc
        if not isinstance(row, dict):
            raise bad_data(path, f"line {number} is a {type(row).__name__}, expected a JSON object", hint)
        rows.append(row)
    return rows


def load_csv(path: Path, hint: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(read_text(path, hint), newline="")))


def require(row: Any, fields: Sequence[str], where: str, path: Path, hint: str) -> None:
    """Raise naming the entry and the missing fields unless `row` is a dict holding all `fields`."""
    if not isinstance(row, dict):
        raise bad_data(path, f"{where} is a {type(row).__name__}, expected an object with fields {list(fields)}", hint)
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise bad_data(path, f"{where} lacks the field(s) {missing} (it has {sorted(row)})", hint)


def check_nonempty(samples: list[Sample], path: Path, hint: str) -> list[Sample]:
    if not samples:
        raise bad_data(path, "no samples found", hint)
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise bad_data(path, f"duplicate sample ids {dup}", hint)
    return samples


def image_opener(path: Path, data: Path, hint: str) -> Callable[[], Image.Image]:
    """A function opening the source image at `path` (checked now, so a wrong image root fails before any work)."""
    if not path.is_file():
        raise bad_data(data, f"the source image {str(path)!r} does not exist", hint + " Pass --image-root with the folder the image paths are relative to.")

    def open_image() -> Image.Image:
        with Image.open(path) as img:
            return img.convert("RGB")

    return open_image


# ------------------------------------------------------------------------------------------------ writing helpers


def temp_path(path: Path) -> Path:
    """Where `path` is written before its rename: `.NAME.PID.tmp` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temp_target(tmp: Path) -> Path | None:
    """The file a `temp_path` temporary file was written for (None for any other name)."""
    match = re.fullmatch(r"\.(.+)\.\d+\.tmp", tmp.name)
    return tmp.with_name(match.group(1)) if match else None


def save_png(image: Image.Image, path: Path) -> None:
    """Write `image` as PNG through a temporary file and a rename (a killed run never leaves a partial PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def save_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_files(out: Path, files: Sequence[str], images: Sequence[Image.Image]) -> None:
    """Save image i as `files[i]` (the common writer: one file per image)."""
    for name, image in zip(files, images, strict=True):
        save_png(image, out / name)


def quoted(path: Path) -> str:
    text = str(path)
    return text if all(c.isalnum() or c in "/._-+:" for c in text) else "'" + text.replace("'", "'\\''") + "'"
