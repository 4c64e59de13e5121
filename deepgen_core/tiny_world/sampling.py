"""Samplers for the three tasks of the tiny world, with a deterministic held-out split.

Held-out rules (fixed; documented in the package docstring):
- text-to-image: the (colour, shape, background) combinations with `(colour_index + shape_index + 2 *
  background_index) % 7 == 3` (indices into `COLOURS` / `SHAPES`), 24 of the 168 combinations (1/7). Every
  colour, shape and background, and every pair of them, still occurs in training.
- text: the (word, text colour, background) combinations with `(word_index + 2 * colour_index + 3 *
  background_index) % 7 == 5`, ~1/7 of the 24 x 22 combinations; every word still occurs in training.
- edits: a triplet is held out when an object of its source or of its target scene has a held-out t2i
  combination; training triplets have none (so no training image ever shows a held-out combination).
Callers derive `rng` from a split-specific seed stream (`sample_rng`), so the two splits never share samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import product

import numpy as np

from .world import (
    COLOURS,
    POSITION_PHRASES,
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
    random_offset,
    scene_is_valid,
)

SPLITS = ("train", "heldout")
EDIT_KINDS = ("recolour", "move", "add", "remove")
_STREAMS = {"t2i": 1, "edit": 2, "text": 3}


def is_heldout_combo(colour: str, shape: str, background: str) -> bool:
    """Whether a (colour, shape, background) combination of the text-to-image world is held out."""
    return (COLOURS.index(colour) + SHAPES.index(shape) + 2 * COLOURS.index(background)) % 7 == 3


def is_heldout_text(word: str, colour: str, background: str) -> bool:
    """Whether a (word, text colour, background) combination of the text world is held out."""
    return (WORDS.index(word) + 2 * COLOURS.index(colour) + 3 * COLOURS.index(background)) % 7 == 5


def scene_has_heldout(scene: Scene) -> bool:
    """True when any object of `scene` shows a held-out (colour, shape, background) combination."""
    return any(is_heldout_combo(o.colour, o.shape, scene.background) for o in scene.objects)


T2I_COMBOS: dict[str, tuple[tuple[str, str, str], ...]] = {
    split: tuple(c for c in product(COLOURS, SHAPES, COLOURS) if c[0] != c[2] and is_heldout_combo(*c) == (split == "heldout"))
    for split in SPLITS
}
TEXT_COMBOS: dict[str, tuple[tuple[str, str, str], ...]] = {
    split: tuple((w, t, b) for w in WORDS for t, b in TEXT_COLOUR_PAIRS if is_heldout_text(w, t, b) == (split == "heldout"))
    for split in SPLITS
}


def sample_rng(seed: int, split: str, task: str, index: int) -> np.random.Generator:
    """The generator of sample `index` of `task` ('t2i', 'edit', 'text') in `split`: independent of any other."""
    _check_split(split)
    return np.random.default_rng([seed, SPLITS.index(split), _STREAMS[task], index])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


@dataclass(frozen=True)
class T2ISample:
    prompt: str
    scene: Scene


@dataclass(frozen=True)
class EditSample:
    instruction: str
    source: Scene
    target: Scene
    kind: str


@dataclass(frozen=True)
class TextSample:
    prompt: str
    scene: TextScene


def random_object(rng: np.random.Generator, scene: Scene, colour: str | None = None, shape: str | None = None,
                  split: str | None = None, tries: int = 100) -> Obj | None:
    """A new object that fits into `scene` (free colour and position, no clash), or None when none was found.

    With `split='train'` its combination is not held out; with 'heldout' it is.
    """
    for _ in range(tries):
        obj = Obj(shape or _pick(rng, SHAPES), colour or _pick(rng, COLOURS), _pick(rng, tuple(SIZES)),
                  _pick(rng, tuple(POSITIONS)), random_offset(rng))
        if split is not None and is_heldout_combo(obj.colour, obj.shape, scene.background) != (split == "heldout"):
            continue
        if scene_is_valid(Scene(scene.background, scene.objects + (obj,))):
            return obj
    return None


def random_scene(rng: np.random.Generator, n_objects: int, split: str = "train") -> Scene:
    """A scene of 1 or 2 objects. 'train': no object has a held-out combination; 'heldout': the first has one."""
    _check_split(split)
    if n_objects not in (1, 2):
        raise ValueError(f"tiny-world scenes hold 1 or 2 objects, got n_objects={n_objects}.")
    while True:
        colour, shape, background = _pick(rng, T2I_COMBOS[split])
        # the first object always fits an empty canvas (its colour differs from the background)
        scene = Scene(background, (random_object(rng, Scene(background), colour, shape),))
        if n_objects == 1:
            return scene
        second = random_object(rng, scene, split="train" if split == "train" else None)
        if second is not None:
            return Scene(background, scene.objects + (second,))


def sample_t2i(rng: np.random.Generator, split: str, n_objects: int = 1) -> T2ISample:
    """A text-to-image sample: a scene and its prompt. Held-out samples use a held-out combination."""
    scene = random_scene(rng, n_objects, split)
    return T2ISample(describe(scene, rng), scene)


def sample_text(rng: np.random.Generator, split: str) -> TextSample:
    """A text-rendering sample (word, text colour, background) and its prompt."""
    _check_split(split)
    scene = TextScene(*_pick(rng, TEXT_COMBOS[split]))
    return TextSample(describe_text(scene, rng), scene)


def _name(obj: Obj, scene: Scene) -> str:
    """'circle' when the shape alone names the object in `scene`, else 'red circle'."""
    return obj.shape if sum(o.shape == obj.shape for o in scene.objects) == 1 else f"{obj.colour} {obj.shape}"


def _recolour(scene: Scene, rng: np.random.Generator, i: int) -> tuple[str, Scene] | None:
    obj = scene.objects[i]
    taken = {scene.background} | {o.colour for o in scene.objects}
    free = [c for c in COLOURS if c not in taken]
    new = replace(obj, colour=_pick(rng, free))
    target = Scene(scene.background, scene.objects[:i] + (new,) + scene.objects[i + 1:])
    verb = _pick(rng, ("make the {o} {c}", "turn the {o} {c}", "change the colour of the {o} to {c}"))
    return verb.format(o=_name(obj, scene) if rng.random() < 0.5 else f"{obj.colour} {obj.shape}", c=new.colour), target


def _move(scene: Scene, rng: np.random.Generator, i: int) -> tuple[str, Scene] | None:
    obj = scene.objects[i]
    options = []
    for position in POSITIONS:
        moved = replace(obj, position=position, offset=random_offset(rng))
        target = Scene(scene.background, scene.objects[:i] + (moved,) + scene.objects[i + 1:])
        if position != obj.position and scene_is_valid(target):
            options.append(target)
    if not options:
        return None
    target = _pick(rng, options)
    where = {"center": "to the center"}.get(target.objects[i].position, f"to the {target.objects[i].position}")
    return f"move the {obj.colour} {obj.shape} {where}", target


def _add(scene: Scene, rng: np.random.Generator, split: str | None) -> tuple[str, Scene] | None:
    obj = random_object(rng, scene, split=split)
    if obj is None:
        return None
    return f"add a {obj.size} {obj.colour} {obj.shape} {POSITION_PHRASES[obj.position]}", Scene(scene.background, scene.objects + (obj,))


def make_edit(scene: Scene, rng: np.random.Generator, kind: str | None = None,
              split: str | None = None) -> tuple[str, Scene, str] | None:
    """An edit of `scene`: (instruction, target scene, kind), or None when `kind` cannot apply to it.

    Kinds: recolour ('make the circle green'), move ('move the red square to the right'), add ('add a small blue
    triangle at the bottom', only to a 1-object scene), remove ('remove the yellow circle', only from a 2-object
    scene). The target differs from `scene` only in what the instruction says. `split` constrains an added
    object's combination.
    """
    kind = kind or _pick(rng, EDIT_KINDS)
    n = len(scene.objects)
    i = int(rng.integers(max(n, 1)))
    if kind == "add":
        result = _add(scene, rng, split) if n == 1 else None
    elif kind == "remove":
        result = None if n != 2 else (f"remove the {scene.objects[i].colour} {scene.objects[i].shape}",
                                      Scene(scene.background, scene.objects[:i] + scene.objects[i + 1:]))
    elif kind in ("recolour", "move"):
        result = None if n == 0 else (_recolour if kind == "recolour" else _move)(scene, rng, i)
    else:
        raise ValueError(f"unknown edit kind {kind!r}; use one of {EDIT_KINDS}.")
    return None if result is None else (result[0], result[1], kind)


def sample_edit(rng: np.random.Generator, split: str) -> EditSample:
    """An edit triplet. The kind is uniform over `EDIT_KINDS`; the source has 1 object for 'add', 2 for 'remove',
    1 or 2 otherwise. 'train' triplets never show a held-out combination; 'heldout' ones always do (source or target).
    """
    _check_split(split)
    kind = _pick(rng, EDIT_KINDS)
    while True:
        n_objects = {"add": 1, "remove": 2}.get(kind, 1 + int(rng.integers(2)))
        source = random_scene(rng, n_objects, "train" if split == "train" else _pick(rng, SPLITS))
        edit = make_edit(source, rng, kind, split=split if split == "train" else None)
        if edit is None:
            continue
        instruction, target, _ = edit
        if (scene_has_heldout(source) or scene_has_heldout(target)) == (split == "heldout"):
            return EditSample(instruction, source, target, kind)


def heldout_t2i(n: int, seed: int = 0) -> list[T2ISample]:
    """The first `n` held-out 1-object text-to-image samples of evaluation seed `seed`."""
    return [sample_t2i(sample_rng(seed, "heldout", "t2i", i), "heldout") for i in range(n)]


def heldout_edits(n: int, seed: int = 0) -> list[EditSample]:
    """The first `n` held-out edit triplets of evaluation seed `seed`."""
    return [sample_edit(sample_rng(seed, "heldout", "edit", i), "heldout") for i in range(n)]


def heldout_texts(n: int, seed: int = 0) -> list[TextSample]:
    """The first `n` held-out text-rendering samples of evaluation seed `seed`."""
    return [sample_text(sample_rng(seed, "heldout", "text", i), "heldout") for i in range(n)]
