"""DeepGen-Tiny's procedural world: coloured shapes and words on plain backgrounds (numpy + PIL, no downloads).

- `world`: palette (8 colours), shapes (circle, square, triangle), sizes (small, large), positions (left, right,
  top, bottom, center), `Obj` / `Scene` / `TextScene`, `render`, `render_text`, `describe`, `describe_text`.
- `sampling`: `sample_t2i`, `sample_edit`, `sample_text`, `make_edit` and the held-out split:
  text-to-image holds out the (colour, shape, background) combos with `(ci + si + 2 * bi) % 7 == 3` (24 of 168);
  text holds out the (word, text colour, background) combos with `(wi + 2 * ci + 3 * bi) % 7 == 5`; an edit
  triplet is held out when its source or target shows a held-out combo (training triplets never do). Samples
  are drawn from per-(seed, split, task, index) seed streams (`sample_rng`), so the splits never share a draw.
- `detect`: an analytic detector (`detect(image) -> Detection`), exact on clean renders.
- `parse`: `parse_prompt` / `parse_scene`, the inverse of `describe`.
- `dataset`: `write_dataset` (trainer indexes) and `write_rl_prompts` (MR-GRPO prompt YAML).
- `evaluate` (imported on demand, it needs torch): acceptance metrics of a `DeepGenPipeline`.
- `reward` (imported on demand): `ShapeWorldReward`, the `shape_world` reward of `deepgen_core.rewards`.
"""

from __future__ import annotations

from .dataset import write_dataset, write_rl_prompts
from .detect import DetectedObject, Detection, detect
from .parse import parse_prompt, parse_scene
from .sampling import (
    EDIT_KINDS,
    SPLITS,
    T2I_COMBOS,
    TEXT_COMBOS,
    EditSample,
    T2ISample,
    TextSample,
    is_heldout_combo,
    is_heldout_text,
    make_edit,
    random_scene,
    sample_edit,
    sample_rng,
    sample_t2i,
    sample_text,
    scene_has_heldout,
)
from .world import (
    COLOURS,
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXT_COLOUR_PAIRS,
    WORDS,
    Obj,
    Scene,
    TextScene,
    describe,
    describe_text,
    object_box,
    render,
    render_text,
)

__all__ = [
    "COLOURS", "EDIT_KINDS", "PALETTE", "POSITIONS", "SHAPES", "SIZES", "SPLITS", "T2I_COMBOS", "TEXT_COLOUR_PAIRS",
    "TEXT_COMBOS", "WORDS", "DetectedObject", "Detection", "EditSample", "Obj", "Scene", "T2ISample", "TextSample",
    "TextScene", "describe", "describe_text", "detect", "is_heldout_combo", "is_heldout_text", "make_edit",
    "object_box", "parse_prompt", "parse_scene", "random_scene", "render", "render_text", "sample_edit",
    "sample_rng", "sample_t2i", "sample_text", "scene_has_heldout", "write_dataset", "write_rl_prompts",
]
