"""Writing the tiny world to disk: training indexes in the trainer's formats and the RL prompt YAML."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from .sampling import random_scene, sample_edit, sample_rng, sample_t2i, sample_text
from .world import describe, render, render_text

logger = logging.getLogger(__name__)

TASKS = ("t2i", "edit", "text")
_CHUNK = 256


def _save(image: Image.Image, path: Path) -> None:
    # Flat colours compress well even at level 1, which is several times faster than the default 6.
    image.save(path, format="PNG", compress_level=1)


def _write_one(args: tuple[str, int, int, int, float, str]) -> tuple[dict, dict]:
    """Render and save sample `index` of `task`; returns (index record, meta record). Runs in a worker."""
    task, index, seed, size, two_object_fraction, root = args
    rng = sample_rng(seed, "train", task, index)
    folder = Path(root) / "images" / task
    name = f"{index:07d}"
    if task == "t2i":
        n_objects = 2 if rng.random() < two_object_fraction else 1
        sample = sample_t2i(rng, "train", n_objects)
        _save(render(sample.scene, size), folder / f"{name}.png")
        return {"txt": sample.prompt, "image_path": f"images/t2i/{name}.png"}, {"task": task, "index": index, "scene": asdict(sample.scene)}
    if task == "text":
        sample = sample_text(rng, "train")
        _save(render_text(sample.scene, size), folder / f"{name}.png")
        return {"txt": sample.prompt, "image_path": f"images/text/{name}.png"}, {"task": task, "index": index, "scene": asdict(sample.scene)}
    edit = sample_edit(rng, "train")
    _save(render(edit.source, size), folder / f"{name}_in.png")
    _save(render(edit.target, size), folder / f"{name}_out.png")
    record = {"input_image": [f"images/edit/{name}_in.png"], "output_image": f"images/edit/{name}_out.png", "instruction": edit.instruction}
    meta = {"task": task, "index": index, "kind": edit.kind, "source": asdict(edit.source), "target": asdict(edit.target)}
    return record, meta


def write_dataset(folder: str | Path, n_t2i: int, n_edit: int, n_text: int, seed: int = 0, size: int = 128,
                  workers: int = 0, two_object_fraction: float = 0.2) -> dict[str, Path]:
    """Write a training-split tiny-world dataset; returns the paths {'t2i', 'edit', 'text', 'meta'}.

    Layout: `images/{t2i,edit,text}/*.png`, `t2i.json` and `text.json` (blip3o: `[{"txt", "image_path"}]`),
    `edit.json` (`[{"input_image": [path], "output_image", "instruction"}]`), `meta.jsonl` (the scene of every
    sample). Sample i of a task depends only on (seed, task, i), so the bytes do not depend on `workers`.

    Args:
        folder: output folder (created).
        n_t2i, n_edit, n_text: samples per task.
        seed: dataset seed.
        size: image side in px (a multiple of 16 suits the model).
        workers: processes for rendering (0: in this process).
        two_object_fraction: share of text-to-image scenes with two objects (the rest have one).
    """
    root = Path(folder)
    for task in TASKS:
        (root / "images" / task).mkdir(parents=True, exist_ok=True)
    jobs = [(task, i, seed, size, two_object_fraction, str(root)) for task, n in zip(TASKS, (n_t2i, n_edit, n_text)) for i in range(n)]
    if workers > 0:
        with get_context("spawn" if _threads_unsafe() else "fork").Pool(workers) as pool:
            results = pool.map(_write_one, jobs, chunksize=_CHUNK)
    else:
        results = [_write_one(job) for job in jobs]
    paths = {task: root / f"{task}.json" for task in TASKS}
    for task in TASKS:
        records = [r for job, (r, _) in zip(jobs, results) if job[0] == task]
        paths[task].write_text(json.dumps(records), encoding="utf-8")
    paths["meta"] = root / "meta.jsonl"
    paths["meta"].write_text("".join(json.dumps(m) + "\n" for _, m in results), encoding="utf-8")
    logger.info("wrote %d t2i, %d edit and %d text samples to %s", n_t2i, n_edit, n_text, root)
    return paths


def _threads_unsafe() -> bool:
    """Fork is fast but unsafe once torch has started its thread pools; use spawn when torch is loaded."""
    return "torch" in sys.modules


def write_rl_prompts(folder: str | Path, n_text: int, n_shapes: int, seed: int = 0) -> Path:
    """Write training-split prompts for MR-GRPO and the rewards YAML naming them (`rewards/weights.py` format).

    `prompts/text.txt` (quoted words, `reward_weights: {ocr: 1.0}`) and `prompts/shapes.txt` (1-object scenes,
    `reward_weights: {shape_world: 1.0}`); returns the YAML path `rl_prompts.yaml`.
    """
    root = Path(folder)
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    text = [sample_text(sample_rng(seed, "train", "text", 10_000_000 + i), "train").prompt for i in range(n_text)]
    shapes = []
    for i in range(n_shapes):
        rng = sample_rng(seed, "train", "t2i", 10_000_000 + i)
        shapes.append(describe(random_scene(rng, 1, "train"), rng))
    (root / "prompts" / "text.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    (root / "prompts" / "shapes.txt").write_text("\n".join(shapes) + "\n", encoding="utf-8")
    path = root / "rl_prompts.yaml"
    path.write_text(
        "# tiny-world MR-GRPO prompts (training split), written by deepgen_core.tiny_world.write_rl_prompts\n"
        "sampling_mode: sample_proportional\n"
        "datasets:\n"
        "  text_render:\n    path: prompts/text.txt\n    reward_weights: {ocr: 1.0}\n"
        "  shapes:\n    path: prompts/shapes.txt\n    reward_weights: {shape_world: 1.0}\n",
        encoding="utf-8",
    )
    return path
