"""Training data: the reference's on-disk formats, a sharded tar format, resizing, and bad-sample handling.

Formats (reference notes §5.4), all paths relative to `image_root` (default: the index file's folder):
- `caption_json` (OpenUni, pre-training): a JSON list of `{"image": path, "annotation": path}`; the caption is
  `annotation_json[caption_key]`.
- `blip3o` (SFT text-to-image): a JSON list (or JSONL) of `{"txt": caption, "image_path": path}`.
- `edit`: a JSON list (or JSONL) of `{"input_image": [paths], "output_image": path, "instruction": text}`.
- `tar`: shards (`*.tar`) whose `<key>.json` members hold a blip3o or edit record; the paths in it name members
  of the same shard. Members are read with `os.pread` at indexed offsets (fork-safe, no extraction).
A sample that cannot be read or fails the size checks is replaced by the next sample of its source and
counted (`num_skipped` in the batch); it never stops a run.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..image_processing import pil_to_tensor, target_size, to_rgb
from ..user_files import exif_upright
from .config import DataConfig, SourceConfig

logger = logging.getLogger(__name__)


class SampleError(Exception):
    """A sample that cannot be used (missing file, undecodable image, bad record, rejected size)."""


@dataclass
class Record:
    text: str
    target: str
    sources: list[str]


def parse_record(raw: Any, fmt: str, caption_key: str, read_text) -> Record:
    """One index entry -> (text, target image path, source image paths)."""
    if not isinstance(raw, dict):
        raise SampleError(f"record is {type(raw).__name__}, expected an object")
    try:
        if fmt == "caption_json":
            annotation = json.loads(read_text(raw["annotation"]))
            return Record(str(annotation[caption_key]), raw["image"], [])
        if fmt == "blip3o" or (fmt == "tar" and "txt" in raw):
            return Record(str(raw["txt"]), raw["image_path"], [])
        sources = raw["input_image"]
        sources = [sources] if isinstance(sources, str) else list(sources)
        if not sources:
            raise SampleError("edit record has an empty input_image list")
        return Record(str(raw["instruction"]), raw["output_image"], sources)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise SampleError(f"record {str(raw)[:120]!r} is missing a field ({exc})") from exc


def read_index(path: Path) -> list[Any]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise TypeError(f"data index {path} must hold a JSON list of records.")
    return data


class TarShards:
    """Random access to the members of one or more tar shards by name (uncompressed tar only)."""

    def __init__(self, pattern: str) -> None:
        path = Path(pattern)
        files = sorted(glob.glob(str(path / "*.tar"))) if path.is_dir() else sorted(glob.glob(pattern))
        if not files:
            raise FileNotFoundError(f"no tar shards match {pattern!r}.")
        self.files = files
        self.members: dict[tuple[int, str], tuple[int, int]] = {}
        self.records: list[tuple[int, str]] = []
        for shard, file in enumerate(files):
            with tarfile.open(file, "r:") as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        self.members[(shard, m.name)] = (m.offset_data, m.size)
                        if m.name.endswith(".json"):
                            self.records.append((shard, m.name))
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def read(self, shard: int, name: str) -> bytes:
        try:
            offset, size = self.members[(shard, name)]
        except KeyError:
            raise SampleError(f"shard {self.files[shard]} has no member {name!r}") from None
        if self._pid != os.getpid():  # descriptors are per process (DataLoader workers fork)
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.files[shard], os.O_RDONLY)
        return os.pread(self._fds[shard], size, offset)


class SourceDataset(torch.utils.data.Dataset):
    """One data source; `__getitem__` returns a sample dict or raises `SampleError`."""

    def __init__(self, source: SourceConfig, data: DataConfig) -> None:
        self.source, self.data = source, data
        self.tar: TarShards | None = None
        if source.format == "tar":
            self.tar = TarShards(source.path)
            self.records: list[Any] = self.tar.records
        else:
            index = Path(source.path)
            if not index.is_file():
                raise FileNotFoundError(f"data index {index} of source {source.name!r} does not exist.")
            self.root = Path(source.image_root) if source.image_root else index.parent
            self.records = read_index(index)

    def __len__(self) -> int:
        return len(self.records)

    def _read_bytes(self, shard: int | None, name: str) -> bytes:
        if self.tar is not None:
            return self.tar.read(shard, name)
        try:
            return (self.root / name).read_bytes()
        except OSError as exc:
            raise SampleError(f"cannot read {self.root / name}: {exc.strerror or exc}") from exc

    def decode_image(self, shard: int | None, name: str) -> Image.Image:
        """The image `name` (of `shard` for tar sources) as stored, or `SampleError`."""
        try:
            image = Image.open(io.BytesIO(self._read_bytes(shard, name)))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise SampleError(f"cannot decode image {name!r}: {exc}") from exc
        return exif_upright(image)  # photos stored sideways with a rotation tag

    def _image(self, shard: int | None, name: str) -> torch.Tensor:
        image = self.decode_image(shard, name)
        w, h = image.size
        if min(w, h) <= self.data.min_side or not 1 / self.data.max_aspect < w / h < self.data.max_aspect:
            raise SampleError(f"image {name!r} is {w}x{h}: a side <= {self.data.min_side} px or aspect outside 1:{self.data.max_aspect:g}")
        image = to_rgb(image, name)
        size = target_size(w, h, self.data.resize, self.data.image_size)
        if size != image.size:
            image = image.resize(size, Image.BICUBIC)  # PIL's default for RGB, as the reference
        return pil_to_tensor(image)

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard = None
        if self.tar is not None:
            shard, name = self.records[index]
            try:
                raw = json.loads(self.tar.read(shard, name))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SampleError(f"bad JSON member {name!r}: {exc}") from exc
        else:
            raw = self.records[index]
        record = parse_record(raw, self.source.format, self.source.caption_key, lambda p: self._read_bytes(shard, p).decode())
        sample: dict[str, Any] = {"pixel_values": self._image(shard, record.target), "text": record.text}
        if self.source.task == "image2image":
            refs = record.sources[: self.data.max_references] if self.data.max_references else record.sources
            sample["pixel_values_src"] = [self._image(shard, r) for r in refs]
        return sample


class MixedDataset(torch.utils.data.Dataset):
    """All sources; indexed by (source, index, batch index, task) keys from the batch sampler."""

    def __init__(self, data: DataConfig) -> None:
        self.data = data
        self.sources = [SourceDataset(s, data) for s in data.sources]

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: tuple[int, int, int, str]) -> dict[str, Any]:
        source, index = key[0], key[1]
        dataset = self.sources[source]
        for attempt in range(self.data.max_retries + 1):
            try:
                sample = dataset[(index + attempt) % len(dataset)]
                sample["skipped"] = attempt
                return sample
            except SampleError as exc:
                logger.warning("skipping sample %d of source %r: %s", (index + attempt) % len(dataset), dataset.source.name, exc)
        raise RuntimeError(f"source {dataset.source.name!r}: {self.data.max_retries + 1} consecutive samples from index {index} are unusable; check the data.")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """List-valued batch (samples may differ in size)."""
    batch = {"pixel_values": [s["pixel_values"] for s in samples], "texts": [s["text"] for s in samples],
             "num_skipped": sum(s["skipped"] for s in samples)}
    if "pixel_values_src" in samples[0]:
        batch["pixel_values_src"] = [s["pixel_values_src"] for s in samples]
    return batch


def pack_images(batch: dict[str, Any]) -> dict[str, Any]:
    """In a DataLoader worker: equal-size images of a batch travel as one stacked tensor (one shared-memory
    handle per batch instead of one per image, which dominated the step time of small models); references too,
    as one (B, R, 3, h, w) tensor when every sample has R references of one size."""
    pixels = batch["pixel_values"]
    if len({p.shape for p in pixels}) == 1:
        batch["pixel_values"] = torch.stack(pixels)
    sources = batch.get("pixel_values_src")
    if sources is not None and len({len(refs) for refs in sources}) == 1 and len({r.shape for refs in sources for r in refs}) == 1:
        batch["pixel_values_src"] = torch.stack([torch.stack(refs) for refs in sources])
    return batch


def unpack_images(batch: dict[str, Any]) -> dict[str, Any]:
    """In the training process: undo `pack_images` (views of the stacked tensors, no copy)."""
    if torch.is_tensor(batch["pixel_values"]):
        batch["pixel_values"] = list(batch["pixel_values"].unbind(0))
    if torch.is_tensor(batch.get("pixel_values_src")):
        batch["pixel_values_src"] = [list(refs.unbind(0)) for refs in batch["pixel_values_src"].unbind(0)]
    return batch


class _KeyedBatches:
    """Adapts the planned batches to DataLoader keys (the task and batch index travel with every key)."""

    def __init__(self, planned) -> None:
        self.planned = planned

    def __iter__(self):
        for b in self.planned:
            yield [(b.source, i, b.index, b.task) for i in b.sample_indices]


def build_dataloader(dataset: MixedDataset, planned_batches, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over planned batches; each yielded batch carries `task` and `index` (micro-batch number)."""
    return torch.utils.data.DataLoader(
        _IndexedDataset(dataset), batch_sampler=_KeyedBatches(planned_batches), collate_fn=_collate_with_meta,
        num_workers=num_workers, persistent_workers=False, prefetch_factor=2 if num_workers else None,
    )


class _IndexedDataset(torch.utils.data.Dataset):
    def __init__(self, inner: MixedDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key):
        sample = self.inner[key]
        sample["_meta"] = (key[2], key[3])
        return sample


def _collate_with_meta(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = pack_images(collate(items))
    batch["index"], batch["task"] = items[0]["_meta"]
    return batch

