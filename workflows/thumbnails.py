"""Renders each template's thumbnail (`example_workflows/<title>.jpg`, what ComfyUI's template browser shows) by
running the template itself, as shipped on the embedded DeepGen-Tiny, in a real headless ComfyUI:

    python workflows/thumbnails.py --comfy-dir /path/to/ComfyUI --python /path/to/comfy/python \
        --runner /path/to/run_workflow.py

The runner is a headless driver (start a server with this pack, queue API workflows, fetch the images); the multi-
reference template's input (both references) is a picture of DeepGen-Tiny's training world.
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


def thumbnails(summary: dict, fetched: Path) -> dict[str, Image.Image]:
    """Template name -> thumbnail, from the run's outputs."""
    api = {p.stem: json.loads(p.read_text()) for p in (REPO / "workflows" / "api").glob("*.json")}
    runs = {Path(path).stem: result for path, result in summary["workflows"].items()}
    out = {}
    t2i = api["deepgen_text_to_image"]
    out["deepgen_text_to_image"] = compose(_images(fetched / "deepgen_text_to_image", _node(t2i, "SaveImage")))
    edit = api["deepgen_edit"]
    source = _images(fetched / "deepgen_edit", _node(edit, "SaveImage", filename_prefix="deepgen_edit_source"))
    edited = _images(fetched / "deepgen_edit", _node(edit, "SaveImage", filename_prefix="deepgen_edit"))
    out["deepgen_edit"] = compose(source + edited, ["source", "make the circle green"])
    multi = api["deepgen_multi_reference_edit"]
    reference = Image.open(fetched / "example.png")
    out["deepgen_multi_reference_edit"] = compose([reference, *_images(fetched / "deepgen_multi_reference_edit", _node(multi, "SaveImage"))],
                                                  ["both references", "result"])
    ocr = api["deepgen_text_rendering_ocr"]
    scores = runs["deepgen_text_rendering_ocr"]["outputs"][_node(ocr, "DeepGenOCRReward")]["deepgen_ocr"][0]["images"]
    out["deepgen_text_rendering_ocr"] = compose(_images(fetched / "deepgen_text_rendering_ocr", _node(ocr, "SaveImage")),
                                                [f"OCR {s['score']:.2f}" for s in scores])
    rollout = runs["deepgen_rl_rollout_preview"]["outputs"][_node(api["deepgen_rl_rollout_preview"], "DeepGenRolloutPreview")]["deepgen_rollout"][0]
    grid = _images(fetched / "deepgen_rl_rollout_preview", _node(api["deepgen_rl_rollout_preview"], "DeepGenRolloutPreview"))[0]
    cell = grid.width // rollout["group_size"]
    cards = [grid.crop((k * cell, 0, (k + 1) * cell, cell)) for k in range(rollout["group_size"])]
    out["deepgen_rl_rollout_preview"] = compose(cards, [f"adv {c['advantage']:+.2f}" for c in rollout["images"]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy-dir", required=True)
    parser.add_argument("--python", required=True, help="the Python that runs ComfyUI")
    parser.add_argument("--runner", type=Path, default=REPO.parent / "shared" / "tools" / "comfy" / "run_workflow.py")
    args = parser.parse_args()
    builder = _builder()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        example = _inputs(root)
        summaries = {}
        for path in sorted((REPO / "workflows" / "api").glob("*.json")):
            fetched = root / path.stem
            cmd = [sys.executable, str(args.runner), str(path), "--comfy-dir", args.comfy_dir, "--python", args.python,
                   "--custom-nodes", str(REPO), "--input-file", str(example), "--fetch-images", str(fetched), "--json-out", str(root / f"{path.stem}.json")]
            subprocess.run(cmd, check=True, timeout=900)
            summaries.update(json.loads((root / f"{path.stem}.json").read_text())["workflows"])
        for name, image in thumbnails({"workflows": summaries}, root).items():
            target = builder.ui_path(name).with_suffix(".jpg")
            image.save(target, quality=85, optimize=True)
            print(target.relative_to(REPO))


if __name__ == "__main__":
    main()
