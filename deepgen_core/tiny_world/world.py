"""The tiny world: flat-colour shapes and words on a plain background, rendered deterministically.

Every attribute comes from a small closed vocabulary (8 colours, 3 shapes, 2 sizes, 5 positions, 24 words), so
an analytic detector (`detect.py`) can read an image back exactly, and prompts can be parsed back into scenes.
Geometry is defined on a 128-px reference canvas and scales linearly with the rendered `size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REFERENCE_SIZE = 128

# Well separated in RGB (closest pair: yellow/orange, ~91 apart), so a median pixel maps back unambiguously.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (250, 220, 30),
    "purple": (140, 50, 190),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 30, "large": 50}  # side of the bounding box on the 128-px canvas
POSITIONS: dict[str, tuple[float, float]] = {  # object centre as a fraction of (width, height)
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom", "center": "in the center",
}
MAX_JITTER = 3  # px on the reference canvas, each axis
MIN_GAP = 4  # px between the boxes of two objects on the reference canvas
WORDS: tuple[str, ...] = (
    "CAT", "DOG", "SUN", "BOX", "HAT", "CUP", "KEY", "MAP", "PEN", "BUS", "FOX", "BEE",
    "CAR", "BED", "EGG", "JAM", "PIG", "TOY", "FISH", "BIRD", "TREE", "STAR", "SHIP", "LAMP",
)
TEXT_FONT_SIZE = 38  # at 128 px
_SUPERSAMPLE = 4


def luminance(colour: str) -> float:
    """Rec. 601 luma of a palette colour, 0..255."""
    r, g, b = PALETTE[colour]
    return 0.299 * r + 0.587 * g + 0.114 * b


# Ordered (text colour, background) pairs with enough luma contrast for OCR to read the word.
TEXT_COLOUR_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (t, b) for t in COLOURS for b in COLOURS if t != b and abs(luminance(t) - luminance(b)) >= 100
)


@dataclass(frozen=True)
class Obj:
    """One shape. `offset` is the jitter of its centre from the position's anchor, in px of the 128-px canvas."""

    shape: str
    colour: str
    size: str
    position: str
    offset: tuple[int, int] = (0, 0)

    def combo(self, background: str) -> tuple[str, str, str]:
        """The (colour, shape, background) combination the held-out split is defined on."""
        return (self.colour, self.shape, background)


@dataclass(frozen=True)
class Scene:
    """A background colour and 0..2 objects (distinct colours and positions, never overlapping)."""

    background: str
    objects: tuple[Obj, ...] = ()


@dataclass(frozen=True)
class TextScene:
    """A word drawn centred in `colour` on `background`."""

    word: str
    colour: str
    background: str


def object_box(obj: Obj, size: int = REFERENCE_SIZE) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the object's bounding box in px of a `size` canvas (x1, y1 exclusive)."""
    scale = size / REFERENCE_SIZE
    ax, ay = POSITIONS[obj.position]
    cx, cy = ax * size + obj.offset[0] * scale, ay * size + obj.offset[1] * scale
    half = SIZES[obj.size] * scale / 2
    return (cx - half, cy - half, cx + half, cy + half)


def boxes_clash(a: Obj, b: Obj, gap: float = MIN_GAP) -> bool:
    """True when the boxes of `a` and `b` (reference canvas) come closer than `gap` px."""
    ax0, ay0, ax1, ay1 = object_box(a)
    bx0, by0, bx1, by1 = object_box(b)
    return ax0 < bx1 + gap and bx0 < ax1 + gap and ay0 < by1 + gap and by0 < ay1 + gap


def scene_is_valid(scene: Scene) -> bool:
    """Distinct colours (also from the background) and positions, and no two boxes closer than `MIN_GAP`."""
    objs = scene.objects
    if any(o.colour == scene.background for o in objs):
        return False
    if len({o.colour for o in objs}) < len(objs) or len({o.position for o in objs}) < len(objs):
        return False
    return not any(boxes_clash(a, b) for i, a in enumerate(objs) for b in objs[i + 1:])


def _draw_object(draw: ImageDraw.ImageDraw, obj: Obj, size: int) -> None:
    x0, y0, x1, y1 = (v * _SUPERSAMPLE for v in object_box(obj, size))
    fill = PALETTE[obj.colour]
    if obj.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "triangle":  # upright isosceles: apex top centre, base along the bottom of the box
        draw.polygon(((x0 + x1) / 2, y0, x1 - 1, y1 - 1, x0, y1 - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; use one of {SHAPES}.")


def render(scene: Scene, size: int = REFERENCE_SIZE) -> Image.Image:
    """Draw `scene` as a `size` x `size` RGB image (4x supersampled, box-filtered down: deterministic antialiasing)."""
    big = Image.new("RGB", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), PALETTE[scene.background])
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        _draw_object(draw, obj, size)
    return big.reduce(_SUPERSAMPLE)


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont:
    # Pillow >= 10.1 bundles a TrueType font for load_default(size=...): no system font needed.
    return ImageFont.load_default(size=px)


def render_text(scene: TextScene, size: int = REFERENCE_SIZE) -> Image.Image:
    """Draw the word centred, ~38 px high at 128 px (shrunk if it would not fit in 85% of the width)."""
    image = Image.new("RGB", (size, size), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    px = max(8, round(TEXT_FONT_SIZE * size / REFERENCE_SIZE))
    while px > 8 and draw.textlength(scene.word, font=_font(px)) > 0.85 * size:
        px -= 1
    draw.text((size / 2, size / 2), scene.word, fill=PALETTE[scene.colour], font=_font(px), anchor="mm")
    return image


_OBJECT_TEMPLATES = ("a {size} {colour} {shape} {where}", "{size} {colour} {shape} {where}")
_SCENE_TEMPLATES = ("{objects}, {bg} background", "{objects} on {a_bg} background", "{bg} background with {objects}")
_TEXT_TEMPLATES = (
    'the word "{word}" in {colour} letters on {a_bg} background',
    '"{word}" written in {colour} on {a_bg} background',
    '{a_bg} background with the word "{word}" in {colour}',
)


def with_article(word: str) -> str:
    """'a red', 'an orange'."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def describe_object(obj: Obj) -> str:
    """'a small red circle on the left'."""
    return _OBJECT_TEMPLATES[0].format(size=obj.size, colour=obj.colour, shape=obj.shape, where=POSITION_PHRASES[obj.position])


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """A prompt stating every attribute of every object and the background, in one of three templates.

    Example: 'a small red circle on the left, blue background'.
    """
    objects = " and ".join(describe_object(o) for o in scene.objects) or "nothing"
    template = _SCENE_TEMPLATES[int(rng.integers(len(_SCENE_TEMPLATES)))]
    return template.format(objects=objects, bg=scene.background, a_bg=with_article(scene.background))


def describe_text(scene: TextScene, rng: np.random.Generator) -> str:
    """A prompt quoting the word with straight double quotes (what `extract_target_text` reads)."""
    template = _TEXT_TEMPLATES[int(rng.integers(len(_TEXT_TEMPLATES)))]
    return template.format(word=scene.word, colour=scene.colour, bg=scene.background, a_bg=with_article(scene.background))


def random_offset(rng: np.random.Generator) -> tuple[int, int]:
    """A centre jitter in [-MAX_JITTER, MAX_JITTER] px per axis (reference canvas)."""
    dx, dy = rng.integers(-MAX_JITTER, MAX_JITTER + 1, size=2)
    return (int(dx), int(dy))
