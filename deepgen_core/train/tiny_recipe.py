"""DeepGen-Tiny from nothing, in one command: `deepgen train deepgen-tiny --out runs/deepgen-tiny`.

The steps run the project's own tools in order, each as a fresh process where it trains, exactly as a user
would type them (the resolved recipes are kept in `<out>/recipes/` for that):

1. `data`: the procedural tiny world (`deepgen_core.tiny_world`): shapes, edit triplets and words, plus the RL
   prompt sets.
2. `vae`: the 16-channel TAESD-layout VAE (`deepgen train vae`).
3. `decoder`: more training of that VAE's decoder alone (`deepgen train vae ... train_encoder=false`); the frozen
   encoder keeps the latent space, so this VAE file is the one every later step uses.
4. `init`: the untrained DeepGen-Tiny (`presets.deepgen_tiny_architecture`) with that VAE, saved converted.
5. `stage1`: alignment pre-training (`deepgen train pretrain`); the DiT trains from scratch here, since there
   is no pretrained tiny DiT to align to (the reference keeps its pretrained DiT frozen).
6. `stage2`: joint SFT with the VLM LoRA (`deepgen train sft`).
7. `stage3`: MR-GRPO with the OCR reward on the text prompts and the shape-world reward (`deepgen train rl`).
8. `eval`: the acceptance metrics of stages 2 and 3 on held-out prompts (`tiny_world.evaluate_all`).
9. `package`: the stage-3 model in fp16 as the embedded default (checked against the 30 MB budget).

Every finished step leaves `<out>/<step>.done` (JSON with its wall time); a re-run skips finished steps and the
training steps resume from their own checkpoints, so an interrupted run continues where it stopped. The recipe
files are in `train/recipes/tiny/`; `{run}` in them stands for the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from PIL import Image

from ..errors import DeepGenInputError

logger = logging.getLogger(__name__)

STEPS = ("data", "vae", "decoder", "init", "stage1", "stage2", "stage3", "eval", "package")
PACKAGE_BUDGET_BYTES = 30 * 1000 * 1000
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPES = REPO_ROOT / "train" / "recipes" / "tiny"


class TinyRun:
    """The output folder and recipe folder of one DeepGen-Tiny run."""

    def __init__(self, out: str | Path, recipes: str | Path = DEFAULT_RECIPES, device: str | None = None) -> None:
        self.out, self.recipes = Path(out).resolve(), Path(recipes).resolve()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if not self.recipes.is_dir():
            raise DeepGenInputError(f"recipe folder {str(self.recipes)!r} does not exist; pass --recipes train/recipes/tiny.")

    def recipe(self, name: str) -> Path:
        """`<recipes>/<name>` with `{run}` replaced by the output folder, written to `<out>/recipes/<name>`."""
        source = self.recipes / name
        if not source.is_file():
            raise DeepGenInputError(f"recipe {str(source)!r} is missing from the recipe folder.")
        target = self.out / "recipes" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text().replace("{run}", str(self.out)))
        return target

    @property
    def vae_file(self) -> Path:
        """The VAE of the run's models: step `decoder`'s output (its encoder is step `vae`'s, frozen)."""
        return self.out / "vae-decoder" / "vae.safetensors"

    def settings(self, name: str) -> dict:
        return yaml.safe_load(self.recipe(name).read_text()) or {}

    def deepgen(self, *args: str) -> None:
        """Run `python -m deepgen_core.cli ARGS` (the `deepgen` command) in a fresh process; fail loudly."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH")))))
        command = [sys.executable, "-m", "deepgen_core.cli", *args]
        logger.info("running: deepgen %s", " ".join(args))
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`deepgen {' '.join(args)}` failed with exit code {done.returncode}; fix it and re-run (finished steps are kept).")


def step_data(run: TinyRun) -> dict:
    from ..tiny_world import write_dataset, write_rl_prompts

    s = run.settings("data.yaml")
    paths = write_dataset(run.out / "data", n_t2i=s["n_t2i"], n_edit=s["n_edit"], n_text=s["n_text"], seed=s["seed"],
                          size=s["size"], workers=s.get("workers", os.cpu_count() or 1))
    rl = write_rl_prompts(run.out / "rl-prompts", n_text=s["rl_text_prompts"], n_shapes=s["rl_shape_prompts"], seed=s["seed"] + 1)
    return {"files": {k: str(v) for k, v in paths.items()}, "rl_prompts": str(rl)}  # rl: <out>/rl-prompts/rl_prompts.yaml


def step_vae(run: TinyRun) -> dict:
    run.deepgen("train", "vae", "--config", str(run.recipe("vae.yaml")))
    return {}


def step_decoder(run: TinyRun) -> dict:
    run.deepgen("train", "vae", "--config", str(run.recipe("vae_decoder.yaml")))
    return {"vae_file": str(run.vae_file)}


def step_init(run: TinyRun) -> dict:
    from ..loading import load_vae_file, save_converted
    from ..presets import deepgen_tiny_architecture

    vae = load_vae_file(run.vae_file)
    components = deepgen_tiny_architecture(seed=run.settings("data.yaml")["seed"], vae=vae)
    save_converted(components, run.out / "init", dtype=torch.float32)
    return {"parameters": {name: sum(p.numel() for p in getattr(components, name).parameters()) for name in ("encoder", "transformer", "vae")}}


def step_stage(stage: str, recipe: str) -> Callable[[TinyRun], dict]:
    def run_stage(run: TinyRun) -> dict:
        run.deepgen("train", stage, "--config", str(run.recipe(recipe)))
        settings = run.settings(recipe)
        # stages 1-2 keep max_minutes / max_steps / checkpoint.output_dir at the top; RL keeps them in `run`
        limits, output_dir = (settings["run"], settings["run"]["output_dir"]) if stage == "rl" else (settings, settings["checkpoint"]["output_dir"])
        if limits.get("max_minutes"):
            reached = finished_step(Path(output_dir))
            if reached < limits["max_steps"]:  # the time budget ended it early: not done, a re-run resumes
                raise RuntimeError(f"{recipe} stopped at step {reached} of {limits['max_steps']} (max_minutes); re-run to resume from that checkpoint.")
        return {}

    return run_stage


def finished_step(output_dir: Path) -> int:
    """The step of the newest complete training checkpoint under `output_dir` (0 without one)."""
    from .checkpointing import STATE_FILE, complete_checkpoints

    found = complete_checkpoints(output_dir / "checkpoints")
    return json.loads((found[-1] / STATE_FILE).read_text())["step"] if found else 0


STAGE_EXPORTS = {"stage1": "stage1/export", "stage2": "stage2/export", "stage3": "stage3/export"}


def load_stage(run: TinyRun, name: str):
    """A stage's export (fp32) with the VAE exactly as the decoder step wrote it (fp16): the stage exports carry a
    bf16 copy of the frozen VAE, and bf16 keeps fewer mantissa bits than the fp16 original."""
    from ..loading import load_vae_file
    from ..pipeline import DeepGenPipeline

    pipe = DeepGenPipeline.from_pretrained(run.out / STAGE_EXPORTS[name], torch_dtype=torch.float32)
    if run.vae_file.is_file():
        pipe.vae = load_vae_file(run.vae_file).eval()
    return pipe


def step_eval(run: TinyRun) -> dict:
    from ..tiny_world.evaluate import evaluate_all, format_table

    s = run.settings("eval.yaml")
    results = {}
    for name in s["checkpoints"]:
        pipe = load_stage(run, name).to(run.device)
        results[name] = evaluate_all(pipe, **s["evaluate"])
        logger.info("%s: %s", name, json.dumps(results[name]))
        sample_sheet(pipe, s["evaluate"]).save(run.out / f"samples-{name}.png")
    (run.out / "metrics.json").write_text(json.dumps(results, indent=1))
    (run.out / "metrics.md").write_text("\n\n".join(f"### {name}\n\n{format_table(r)}" for name, r in results.items()) + "\n")
    return {"metrics": results}


def sample_sheet(pipe, settings: dict, n: int = 8) -> Image.Image:
    """Held-out prompts of each task (t2i, edit with its input, text) with the model's images, for a look."""
    from ..image_processing import captioned_grid
    from ..tiny_world import render
    from ..tiny_world.sampling import heldout_edits, heldout_t2i, heldout_texts

    kwargs = {"num_inference_steps": settings["steps"], "guidance_scale": settings["cfg"], "height": settings["size"], "width": settings["size"]}
    t2i, texts, edits = heldout_t2i(n), heldout_texts(n), heldout_edits(n // 2)
    images = pipe([x.prompt for x in t2i + texts], generator=torch.Generator("cpu").manual_seed(0), **kwargs).images
    sources = [render(e.source, settings["size"]) for e in edits]
    edited = pipe([e.instruction for e in edits], image=[[src] for src in sources], generator=torch.Generator("cpu").manual_seed(0), **kwargs).images
    pairs = [img for pair in zip(sources, edited) for img in pair]
    captions = [x.prompt for x in t2i + texts] + [c for e in edits for c in ("input", e.instruction)]
    return captioned_grid(images + pairs, [_wrap(c) for c in captions], columns=n)


def _wrap(text: str, width: int = 22) -> str:
    words, lines = text.split(), [""]
    for word in words:
        lines[-1:] = [lines[-1] + " " + word] if len(lines[-1]) + len(word) < width else [lines[-1], word]
    return "\n".join(line.strip() for line in lines)


def step_package(run: TinyRun) -> dict:
    package = run.out / "package"
    pipe = load_stage(run, "stage3")
    files = pipe.save_converted(package, torch.float16)
    size = sum(p.stat().st_size for p in package.iterdir() if p.is_file())
    if size > PACKAGE_BUDGET_BYTES:
        raise RuntimeError(f"the packaged model is {size / 1e6:.1f} MB, over the {PACKAGE_BUDGET_BYTES / 1e6:.0f} MB budget; shrink the DiT in presets.deepgen_tiny_transformer.")
    if (run.out / "metrics.json").is_file():
        (package / "metrics.json").write_text((run.out / "metrics.json").read_text())
    return {"bytes": size, "files": [str(p) for p in files.values()]}


STEP_FUNCTIONS: dict[str, Callable[[TinyRun], dict]] = {
    "data": step_data, "vae": step_vae, "decoder": step_decoder, "init": step_init,
    "stage1": step_stage("pretrain", "stage1.yaml"), "stage2": step_stage("sft", "stage2.yaml"), "stage3": step_stage("rl", "stage3.yaml"),
    "eval": step_eval, "package": step_package,
}


def run_tiny_recipe(run: TinyRun, first: str = STEPS[0], last: str = STEPS[-1]) -> dict[str, dict]:
    """Run steps `first`..`last` (skipping finished ones); returns each step's record (with `seconds`)."""
    for name in (first, last):
        if name not in STEPS:
            raise DeepGenInputError(f"unknown step {name!r}; steps are {', '.join(STEPS)}.")
    run.out.mkdir(parents=True, exist_ok=True)
    records = {}
    for step in STEPS[STEPS.index(first) : STEPS.index(last) + 1]:
        marker = run.out / f"{step}.done"
        if marker.is_file():
            records[step] = json.loads(marker.read_text())
            logger.info("step %s already done (%.0f s); skipping", step, records[step]["seconds"])
            continue
        start = time.perf_counter()
        record = STEP_FUNCTIONS[step](run)
        record["seconds"] = round(time.perf_counter() - start, 1)
        record["device"] = torch.cuda.get_device_name() if run.device.startswith("cuda") else "cpu"
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, marker)
        records[step] = record
        logger.info("step %s done in %.0f s", step, record["seconds"])
    return records
