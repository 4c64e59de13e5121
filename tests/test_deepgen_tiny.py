"""Acceptance of the embedded DeepGen-Tiny: held-out tiny-world metrics on the CPU, and the README's
main command drawing what it says. Skipped when the package has no trained weights yet.

Everything is deterministic: held-out samples and generator seeds are fixed (`tiny_world.evaluate`), so a
model that passes passes every time.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepgen_core import cli
from deepgen_core.loading import TRANSFORMER_FILE
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import DEEPGEN_TINY_DIR, deepgen_tiny_dir
from deepgen_core.tiny_world import detect
from deepgen_core.tiny_world.evaluate import (
    ACCEPTANCE,
    evaluate_edits,
    evaluate_t2i,
    evaluate_text,
)

README = Path(__file__).resolve().parent.parent / "README.md"
METRICS = DEEPGEN_TINY_DIR / "metrics.json"

# DeepGen-Tiny's acceptance thresholds (held-out split, 25 steps, CFG 4, 128 px).
STEPS, CFG, SEED, BATCH = 25, 4.0, 0, 16
T2I_N, T2I_COLOUR_MIN, T2I_SHAPE_MIN, T2I_BACKGROUND_MIN = 48, 0.90, 0.80, 0.90
EDIT_N, EDIT_SUCCESS_MIN, EDIT_PSNR_UNTOUCHED_MIN = 32, 0.80, 25.0
TEXT_N = 16
# Our 16 prompts are the first 16 of the 128 behind the stored value (other batches, so other noise): allow two
# words of the 16 below it.
TEXT_TOLERANCE = 2 / TEXT_N


def _require_weights() -> None:
    if not (DEEPGEN_TINY_DIR / TRANSFORMER_FILE).is_file():
        pytest.skip(f"the trained DeepGen-Tiny is not in {DEEPGEN_TINY_DIR} yet (deepgen train deepgen-tiny, step package)")


@pytest.fixture(scope="module")
def pipe() -> DeepGenPipeline:
    _require_weights()
    return DeepGenPipeline.from_pretrained(deepgen_tiny_dir(), torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def stored_metrics() -> dict:
    """The recipe's eval step results shipped with the weights: {'stage2': {'t2i', 'edit', 'text'}, 'stage3': ...}."""
    _require_weights()
    assert METRICS.is_file(), f"{METRICS} is missing: copy the run's package/metrics.json next to the weights"
    return json.loads(METRICS.read_text())


def _sampling() -> dict:
    return {"seed": SEED, "steps": STEPS, "cfg": CFG, "batch": BATCH, "size": 128}


def test_thresholds_mirror_the_acceptance_table():
    assert {key: ACCEPTANCE[key] for key in (("t2i", "colour"), ("t2i", "shape"), ("t2i", "background"), ("edit", "success"), ("edit", "psnr_untouched"))} == {
        ("t2i", "colour"): T2I_COLOUR_MIN, ("t2i", "shape"): T2I_SHAPE_MIN, ("t2i", "background"): T2I_BACKGROUND_MIN,
        ("edit", "success"): EDIT_SUCCESS_MIN, ("edit", "psnr_untouched"): EDIT_PSNR_UNTOUCHED_MIN,
    }


def test_text_to_image_on_heldout_combinations(pipe):
    result = evaluate_t2i(pipe, n=T2I_N, **_sampling())
    assert result["colour"] >= T2I_COLOUR_MIN, result
    assert result["shape"] >= T2I_SHAPE_MIN, result
    assert result["background"] >= T2I_BACKGROUND_MIN, result


# The shipped weights (stage 2 with the fine-tuned decoder) make 27 of these 32 edits (and 0.836 of 128 held-out edits);
# the first decoder made 29 of the 32 (0.820 of 128). Guard: the acceptance threshold, 26 of 32, one edit of slack.
EDIT_SUCCESS_SHIPPED_FLOOR = 26 / EDIT_N


@pytest.fixture(scope="module")
def edit_result(pipe) -> dict:
    return evaluate_edits(pipe, n=EDIT_N, **_sampling())


def test_edits_on_heldout_triplets(edit_result):
    result = edit_result
    assert result["success"] >= EDIT_SUCCESS_MIN, result
    assert result["success"] >= EDIT_SUCCESS_SHIPPED_FLOOR, result
    assert result["psnr_untouched"] >= EDIT_PSNR_UNTOUCHED_MIN, result


def _shipped(stored_metrics: dict) -> str:
    """The stage whose weights ship (the recipe's package step ships stage 3)."""
    return stored_metrics.get("shipped", "stage3")


@pytest.mark.xfail(strict=True, reason="no stage 3 has read held-out words clearly better than stage 2 (over thirty runs, MR-GRPO and "
                   "DiffusionNFT; the best read 0.941 of 256 against 0.910 on the GPU but 239 against 237 on the CPU, and no "
                   "checkpoint inside three scanned runs was better; docs/deepgen-tiny.md), so stage 2 ships. "
                   "Remove this mark with a stage 3 that reads better.")
def test_reinforcement_learning_improved_text_rendering(stored_metrics):
    stage2, stage3 = (stored_metrics[s]["text"]["exact_word"] for s in ("stage2", "stage3"))
    assert _shipped(stored_metrics) == "stage3", "the shipped weights are not stage 3's"
    assert stage3 > stage2, f"stage 3 (MR-GRPO) should read better than stage 2: {stage3:.3f} vs {stage2:.3f}"


def test_text_rendering_on_heldout_words(pipe, stored_metrics):
    stored = stored_metrics[_shipped(stored_metrics)]["text"]["exact_word"]
    result = evaluate_text(pipe, n=TEXT_N, **_sampling())
    assert result["exact_word"] >= stored - TEXT_TOLERANCE, (result, stored)


def _readme_command() -> list[str]:
    """The quick start's `deepgen generate ...` (the README's main command) as argv, without `deepgen`."""
    match = re.search(r"deepgen generate --prompt \"[^\"]*\" --out \S+", README.read_text())
    assert match, "README: the quick start lost its `deepgen generate --prompt ... --out ...` command"
    return shlex.split(match.group(0))[1:]


def test_readme_main_command_draws_a_red_circle_on_blue(tmp_path):
    argv = _readme_command()
    _require_weights()
    out = tmp_path / "red_circle.png"
    argv[argv.index("--out") + 1] = str(out)
    assert cli.main([*argv, "--device", "cpu"]) == 0
    image = Image.open(out)
    found = detect(image)
    assert image.size == (128, 128)
    assert found.background == "blue" and found.objects, found
    assert (found.objects[0].obj.colour, found.objects[0].obj.shape) == ("red", "circle"), found
