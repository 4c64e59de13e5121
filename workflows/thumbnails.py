"""Renders each template's thumbnail (`example_workflows/<title>.jpg`, what ComfyUI's template browser shows) by
running the template itself, as shipped on the embedded DeepGen-Tiny, in a real headless ComfyUI:

    python workflows/thumbnails.py --comfy-dir /path/to/ComfyUI --python /path/to/comfy/python \
        --runner /path/to/run_workflow.py

`--only NAME ...` renders some templates only. The runner is a headless driver (start a server with this pack, queue
API workflows, fetch the images); the multi-reference template's input (both references) is a picture of
DeepGen-Tiny's training world.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
SIZE = (400, 300)
BACKGROUND = (32, 34, 38)


def _builder():
    spec = importlib.util.spec_from_file_location("workflow_builder", REPO / "workflows" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["workflow_builder"] = module
    spec.loader.exec_module(module)
    return module


def compose(images: list[Image.Image], labels: list[str] | None = None) -> Image.Image:
    """Images side by side (pixel-exact upscaling), each with an optional label under it, centred on a SIZE card."""
    labels = labels or [""] * len(images)
    label_height = 26 if any(labels) else 0
    side = min((SIZE[0] - 12 * (len(images) + 1)) // len(images), SIZE[1] - 24 - label_height)
    card = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(card)
    font = ImageFont.load_default(size=16)
    left = (SIZE[0] - len(images) * side - (len(images) - 1) * 12) // 2
    top = (SIZE[1] - side - label_height) // 2
    for k, (image, label) in enumerate(zip(images, labels)):
        image = image.convert("RGB")
        scale = side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
        x = left + k * (side + 12)
        card.paste(image, (x + (side - image.width) // 2, top + (side - image.height) // 2))
        if label:
            draw.text((x + side // 2, top + side + 6), label, fill=(230, 230, 230), font=font, anchor="ma")
    return card


def _inputs(folder: Path) -> Path:
    from deepgen_core.tiny_world import Obj, Scene, render

    render(Scene("white", (Obj("square", "red", "large", "center"),))).save(folder / "example.png")
    return folder / "example.png"


def _images(fetched: Path, node: str) -> list[Image.Image]:
    return [Image.open(p) for p in sorted(fetched.glob(f"{node}_*.png"))]


def _node(api: dict, class_type: str, **inputs) -> str:
    return next(k for k, n in api.items() if n["class_type"] == class_type and all(n["inputs"].get(i) == v for i, v in inputs.items()))


def _saved(api: dict, fetched: Path, name: str, prefix: str | None = None) -> list[Image.Image]:
    """The images template `name`'s SaveImage node (the one with `prefix`, if given) wrote."""
    node = _node(api[name], "SaveImage", **({"filename_prefix": prefix} if prefix else {}))
    return _images(fetched / name, node)


def _edit(api: dict, fetched: Path, name: str, prefix: str) -> Image.Image:
    source, edited = _saved(api, fetched, name, f"{prefix}_source"), _saved(api, fetched, name, prefix)
    return compose(source + edited, ["source", "make the circle green"])


def _ocr(api: dict, runs: dict, fetched: Path) -> Image.Image:
    name = "deepgen_text_rendering_ocr"
    scores = runs[name]["outputs"][_node(api[name], "DeepGenOCRReward")]["deepgen_ocr"][0]["images"]
    return compose(_saved(api, fetched, name), [f"OCR {s['score']:.2f}" for s in scores])


def _rollout(api: dict, runs: dict, fetched: Path) -> Image.Image:
    name = "deepgen_rl_rollout_preview"
    node = _node(api[name], "DeepGenRolloutPreview")
    rollout = runs[name]["outputs"][node]["deepgen_rollout"][0]
    grid = _images(fetched / name, node)[0]
    cell = grid.width // rollout["group_size"]
    cards = [grid.crop((k * cell, 0, (k + 1) * cell, cell)) for k in range(rollout["group_size"])]
    return compose(cards, [f"adv {c['advantage']:+.2f}" for c in rollout["images"]])


# template name -> its thumbnail from (API templates, run results by template, fetched images folder)
RENDERERS = {
    "deepgen_text_to_image": lambda api, runs, fetched: compose(_saved(api, fetched, "deepgen_text_to_image")),
    "deepgen_edit": lambda api, runs, fetched: _edit(api, fetched, "deepgen_edit", "deepgen_edit"),
    "deepgen_multi_reference_edit": lambda api, runs, fetched: compose(
        [Image.open(fetched / "example.png"), *_saved(api, fetched, "deepgen_multi_reference_edit")], ["both references", "result"]),
    "deepgen_text_rendering_ocr": _ocr,
    "deepgen_rl_rollout_preview": _rollout,
    "deepgen_native_text_to_image": lambda api, runs, fetched: compose(_saved(api, fetched, "deepgen_native_text_to_image")),
    "deepgen_native_edit": lambda api, runs, fetched: _edit(api, fetched, "deepgen_native_edit", "deepgen_native_edit"),
}


def thumbnails(summary: dict, fetched: Path, names: list[str] | None = None) -> dict[str, Image.Image]:
    """Template name -> thumbnail, from the run's outputs (every template, or those in `names`)."""
    api = {p.stem: json.loads(p.read_text()) for p in (REPO / "workflows" / "api").glob("*.json")}
    runs = {Path(path).stem: result for path, result in summary["workflows"].items()}
    return {name: RENDERERS[name](api, runs, fetched) for name in (names or RENDERERS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-dir", required=True)
    parser.add_argument("--python", required=True, help="the Python that runs ComfyUI")
    parser.add_argument("--runner", type=Path, default=REPO.parent / "shared" / "tools" / "comfy" / "run_workflow.py")
    parser.add_argument("--only", nargs="+", choices=sorted(RENDERERS), help="render these templates only (default: all)")
    args = parser.parse_args()
    builder = _builder()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        example = _inputs(root)
        summaries = {}
        names = args.only or sorted(RENDERERS)
        for path in (REPO / "workflows" / "api" / f"{name}.json" for name in names):
            fetched = root / path.stem
            cmd = [sys.executable, str(args.runner), str(path), "--comfy-dir", args.comfy_dir, "--python", args.python,
                   "--custom-nodes", str(REPO), "--input-file", str(example), "--fetch-images", str(fetched), "--json-out", str(root / f"{path.stem}.json")]
            subprocess.run(cmd, check=True, timeout=900)
            summaries.update(json.loads((root / f"{path.stem}.json").read_text())["workflows"])
        for name, image in thumbnails({"workflows": summaries}, root, names).items():
            target = builder.ui_path(name).with_suffix(".jpg")
            image.save(target, quality=85, optimize=True)
            print(target.relative_to(REPO))


if __name__ == "__main__":
    main()
