"""Parsing tiny-world prompts back into scenes (the inverse of `world.describe` for 1-object scenes)."""

from __future__ import annotations

import re

from .world import COLOURS, POSITION_PHRASES, SHAPES, SIZES, Obj, Scene

_COLOUR = "|".join(COLOURS)
_OBJECT = re.compile(
    rf"\b(?P<size>{'|'.join(SIZES)}) (?P<colour>{_COLOUR}) (?P<shape>{'|'.join(SHAPES)}) "
    rf"(?P<where>{'|'.join(re.escape(p) for p in POSITION_PHRASES.values())})"
)
_BACKGROUND = re.compile(rf"\b(?P<colour>{_COLOUR}) background\b")
_PHRASE_TO_POSITION = {phrase: position for position, phrase in POSITION_PHRASES.items()}


def parse_scene(prompt: str) -> Scene | None:
    """The scene a tiny-world prompt describes (object offsets zero), or None when it is not such a prompt.

    A prompt with quoted text (a text-rendering prompt), without a '<colour> background' or without an object
    phrase ('<size> <colour> <shape> <position phrase>') is not parsed.
    """
    text = prompt.strip().lower()
    if '"' in text or "\u201c" in text:
        return None
    background = _BACKGROUND.findall(text)
    objects = tuple(
        Obj(m["shape"], m["colour"], m["size"], _PHRASE_TO_POSITION[m["where"]]) for m in _OBJECT.finditer(text)
    )
    if len(background) != 1 or not objects:
        return None
    return Scene(background[0], objects)


def parse_prompt(prompt: str) -> tuple[Obj, str] | None:
    """(object, background) of a 1-object tiny-world prompt, or None for anything else.

    Example: `parse_prompt('a small red circle on the left, blue background')` ->
    `(Obj('circle', 'red', 'small', 'left'), 'blue')`.
    """
    scene = parse_scene(prompt)
    if scene is None or len(scene.objects) != 1:
        return None
    return scene.objects[0], scene.background
