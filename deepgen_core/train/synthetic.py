"""A tiny synthetic dataset in every supported on-disk format, for the tiny recipes, smoke runs and tests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = ("a red square on a blue background", "a green circle", "two yellow stripes", "a purple triangle at night")
INSTRUCTIONS = ("make it darker", "turn the colours around", "add a white border", "mirror the picture")


def _image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random image (a low-resolution noise field upscaled), so that the VAE sees structure."""
    low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(low).resize((width, height), Image.BICUBIC)


def write_synthetic_dataset(folder: str | Path, n: int = 4, size: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write `n` samples per format under `folder`; returns the index path of each format.

    blip3o.json ({txt, image_path}), caption/data.json (+ per-image annotations), edit.json (two references
    per sample), and shards/part-0.tar holding the edit records.
    """
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "caption").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    blip, caption, edit, members = [], [], [], {}
    for i in range(n):
        w, h = (size, size) if i % 2 == 0 else (size + size // 2, size)
        for name in (f"t{i}.png", f"s{i}a.png", f"s{i}b.png"):
            _image(rng, w if name.startswith("t") else size, h).save(root / "images" / name)
        blip.append({"txt": CAPTIONS[i % len(CAPTIONS)], "image_path": f"images/t{i}.png"})
        (root / "caption" / f"a{i}.json").write_text(json.dumps({"caption": CAPTIONS[i % len(CAPTIONS)]}))
        caption.append({"image": f"../images/t{i}.png", "annotation": f"a{i}.json"})
        record = {"input_image": [f"images/s{i}a.png", f"images/s{i}b.png"], "output_image": f"images/t{i}.png", "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)]}
        edit.append(record)
        members[f"k{i}.json"] = json.dumps({**record, "input_image": [f"k{i}.src0.png", f"k{i}.src1.png"], "output_image": f"k{i}.png"}).encode()
        for member, source in ((f"k{i}.png", f"t{i}.png"), (f"k{i}.src0.png", f"s{i}a.png"), (f"k{i}.src1.png", f"s{i}b.png")):
            members[member] = (root / "images" / source).read_bytes()
    paths = {"blip3o": root / "blip3o.json", "caption_json": root / "caption" / "data.json", "edit": root / "edit.json", "tar": root / "shards" / "part-0.tar"}
    paths["blip3o"].write_text(json.dumps(blip))
    paths["caption_json"].write_text(json.dumps(caption))
    paths["edit"].write_text(json.dumps(edit))
    paths["tar"].parent.mkdir(exist_ok=True)
    with tarfile.open(paths["tar"], "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return paths
