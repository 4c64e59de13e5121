"""`deepgen train deepgen-tiny`: the whole DeepGen-Tiny recipe (data, VAE, stages 1-3, evaluation, package) runs
end to end from the shipped recipe files, here shrunk to a few steps on the CPU, and a re-run skips what is done."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from deepgen_core.train.tiny_recipe import (
    DEFAULT_RECIPES,
    STEPS,
    TinyRun,
    run_tiny_recipe,
)

SMOKE = {  # recipe file -> dotted keys to shrink (everything else is the shipped recipe)
    "data.yaml": {"n_t2i": 24, "n_text": 8, "n_edit": 8, "rl_text_prompts": 4, "rl_shape_prompts": 4, "workers": 0},
    "vae.yaml": {"max_steps": 3, "batch_size": 4, "holdout": 4, "optim.warmup_steps": 1, "mixed_precision": "no", "cpu": True, "save_every": 0, "eval_every": 0, "log_every": 1},
    "vae_decoder.yaml": {"max_steps": 3, "batch_size": 4, "holdout": 4, "optim.warmup_steps": 1, "mixed_precision": "no", "cpu": True, "save_every": 0, "eval_every": 0, "log_every": 1,
                         "optim.lr": 1e-3, "max_images_per_source": 6},
    "stage1.yaml": {"micro_batch_size": 2, "max_steps": 2, "optim.warmup_steps": 1, "data.num_workers": 0, "distributed": {"mixed_precision": "no", "cpu": True}, "checkpoint.save_every": 0},
    "stage2.yaml": {"micro_batch_size": 2, "max_steps": 2, "optim.warmup_steps": 1, "data.num_workers": 0, "distributed": {"mixed_precision": "no", "cpu": True}, "checkpoint.save_every": 0},
    "stage3.yaml": {"rollout.group_size": 2, "rollout.prompts_per_step": 2, "rollout.num_inference_steps": 2, "policy.micro_batch_size": 4,
                    "optim.warmup_steps": 0, "distributed": {"mixed_precision": "no", "cpu": True}, "run.max_steps": 1, "run.save_every": 0, "run.save_images_every": 0,
                    "rewards.options.ocr.workers": 1},
    "eval.yaml": {"checkpoints": ["stage3"], "evaluate": {"n_t2i": 2, "n_edit": 2, "n_text": 0, "seed": 0, "steps": 2, "cfg": 4.0, "batch": 2, "size": 128}},
}


def _shrink(source: Path, target: Path) -> None:
    target.mkdir()
    for name, changes in SMOKE.items():
        data = yaml.safe_load((source / name).read_text())
        for key, value in changes.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        (target / name).write_text(yaml.safe_dump(data))


@pytest.mark.slow
def test_recipe_runs_end_to_end_and_resumes(tmp_path):
    recipes = tmp_path / "recipes"
    _shrink(DEFAULT_RECIPES, recipes)
    run = TinyRun(tmp_path / "run", recipes, device="cpu")
    records = run_tiny_recipe(run)
    assert list(records) == list(STEPS) and all(r["seconds"] >= 0 for r in records.values())
    out = tmp_path / "run"
    assert (out / "recipes" / "stage1.yaml").read_text().count(str(out)) >= 3  # {run} resolved
    for export in ("stage1/export", "stage2/export", "stage3/export", "package"):
        assert (out / export / "deepgen.json").is_file(), export
    assert records["package"]["bytes"] <= 30e6
    # The decoder step trains the decoder of step `vae`'s VAE and freezes its encoder; the models carry that VAE.
    joint, tuned, packaged = (load_file(out / f) for f in ("vae/vae.safetensors", "vae-decoder/vae.safetensors", "package/deepgen-vae.safetensors"))
    assert joint.keys() == tuned.keys() == packaged.keys()
    encoder = [k for k in joint if k.startswith("taesd_encoder.")]
    assert encoder and all(torch.equal(joint[k], tuned[k]) for k in encoder)
    assert any(not torch.equal(joint[k], tuned[k]) for k in joint if k.startswith("taesd_decoder."))
    assert all(torch.equal(tuned[k], packaged[k]) for k in tuned)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["stage3"]["t2i"]["colour"] <= 1.0
    # A re-run skips every finished step (nothing retrains); removing a marker reruns only that step.
    shutil.rmtree(out / "package")
    (out / "package.done").unlink()
    again = run_tiny_recipe(run)
    assert again["stage1"] == records["stage1"] and (out / "package" / "deepgen.json").is_file()


def _stage_recipe(folder: Path, max_steps: int, max_minutes: float, output_dir: Path) -> None:
    folder.mkdir(exist_ok=True)
    data = {"max_steps": max_steps, "max_minutes": max_minutes, "checkpoint": {"output_dir": str(output_dir)}}
    (folder / "stage2.yaml").write_text(yaml.safe_dump(data))


def _checkpoint(output_dir: Path, step: int) -> None:
    folder = output_dir / "checkpoints" / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / "checkpoint.json").write_text(json.dumps({"step": step}))


def test_a_stage_stopped_by_its_time_budget_is_not_marked_done(tmp_path, monkeypatch):
    """A stage that `max_minutes` ended before `max_steps` raises (so no `.done` marker: a re-run resumes it); one
    that reached `max_steps` passes. Incomplete (`.tmp-*`) checkpoints do not count."""
    from deepgen_core.train import tiny_recipe

    recipes, stage_out = tmp_path / "recipes", tmp_path / "stage2"
    _stage_recipe(recipes, max_steps=5, max_minutes=1.0, output_dir=stage_out)
    run = TinyRun(tmp_path / "run", recipes, device="cpu")
    monkeypatch.setattr(TinyRun, "deepgen", lambda self, *args: None)  # the training process itself is not run here
    step = tiny_recipe.STEP_FUNCTIONS["stage2"]
    _checkpoint(stage_out, 3)
    (stage_out / "checkpoints" / ".tmp-step-00000005").mkdir()
    assert tiny_recipe.finished_step(stage_out) == 3
    with pytest.raises(RuntimeError, match="stopped at step 3 of 5"):
        step(run)
    with pytest.raises(RuntimeError, match="stopped at step 3"):
        run_tiny_recipe(run, first="stage2", last="stage2")
    assert not (run.out / "stage2.done").exists()
    _checkpoint(stage_out, 5)
    assert step(run) == {}
    _stage_recipe(recipes, max_steps=9, max_minutes=0, output_dir=stage_out)  # no budget: the trainer ran to the end
    assert step(run) == {}


def test_an_rl_stage_stopped_by_its_time_budget_is_not_marked_done(tmp_path, monkeypatch):
    """The same for stage 3, whose recipe keeps max_steps / max_minutes / output_dir in its `run` section."""
    from deepgen_core.train import tiny_recipe

    recipes, stage_out = tmp_path / "recipes", tmp_path / "stage3"
    recipes.mkdir()
    (recipes / "stage3.yaml").write_text(yaml.safe_dump({"run": {"max_steps": 4, "max_minutes": 2.0, "output_dir": str(stage_out)}}))
    run = TinyRun(tmp_path / "run", recipes, device="cpu")
    monkeypatch.setattr(TinyRun, "deepgen", lambda self, *args: None)
    _checkpoint(stage_out, 2)
    with pytest.raises(RuntimeError, match="stage3.yaml stopped at step 2 of 4"):
        tiny_recipe.STEP_FUNCTIONS["stage3"](run)
    _checkpoint(stage_out, 4)
    assert tiny_recipe.STEP_FUNCTIONS["stage3"](run) == {}
