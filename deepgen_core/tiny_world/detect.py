"""An analytic detector for the tiny world (numpy only): reads a rendered (or generated) image back into a scene.

Steps: background = palette colour nearest the median border pixel; foreground = pixels far from it;
connected components of the foreground (min-label propagation with pointer jumping); per component: colour =
palette colour nearest its median pixel, then its exact mask = pixels closer to that colour than to the background
(along the line between them, so blur moves no area), shape by the fill ratio of the mask's box (square ~1.0,
circle ~0.785, triangle ~0.5), size by the box side, position by the box centre's nearest anchor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import COLOURS, PALETTE, POSITIONS, REFERENCE_SIZE, SIZES, Obj, Scene

_PALETTE_ARRAY = np.asarray([PALETTE[c] for c in COLOURS], dtype=np.float32)
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that marks a foreground pixel
MIN_AREA = 60  # px on the 128-px canvas: smaller components are specks
_SIZE_THRESHOLD = sum(SIZES.values()) / 2


@dataclass(frozen=True)
class DetectedObject:
    """One detected object with its box (x0, y0, x1, y1 exclusive, image px) and mask area (px)."""

    obj: Obj
    box: tuple[int, int, int, int]
    area: int
    fill: float


@dataclass(frozen=True)
class Detection:
    """Background colour and the objects found, largest first."""

    background: str
    objects: tuple[DetectedObject, ...]

    @property
    def scene(self) -> Scene:
        """The detection as a `Scene` (object offsets are zero)."""
        return Scene(self.background, tuple(d.obj for d in self.objects))


def nearest_colour(rgb: np.ndarray) -> str:
    """The palette colour nearest an RGB triple."""
    return COLOURS[int(np.argmin(((_PALETTE_ARRAY - np.asarray(rgb, dtype=np.float32)) ** 2).sum(-1)))]


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean (H, W) mask: int labels, -1 outside the mask (pure numpy)."""
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        new = np.where(mask, neighbours, big)
        flat = np.append(new.ravel(), big)
        for _ in range(4):  # pointer jumping: follow labels to their own labels (speeds convergence)
            flat[:-1] = flat[flat[:-1]]
        new = flat[:-1].reshape(h, w)
        if np.array_equal(new, labels):
            return np.where(mask, labels, -1)
        labels = new


def _classify_shape(fill: float) -> str:
    if fill > 0.9:
        return "square"
    return "circle" if fill > 0.64 else "triangle"


def _nearest_position(cx: float, cy: float, width: int, height: int) -> str:
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] * width - cx) ** 2 + (POSITIONS[p][1] * height - cy) ** 2)


def _measure(pixels: np.ndarray, component: np.ndarray, background: np.ndarray, min_area: float) -> DetectedObject | None:
    """Colour, exact mask and geometry of one component (None for a speck)."""
    colour = nearest_colour(np.median(pixels[component], axis=0))
    ys, xs = np.nonzero(component)
    pad = 3
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, pixels.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, pixels.shape[1])
    crop = pixels[y0:y1, x0:x1]
    direction = np.asarray(PALETTE[colour], dtype=np.float32) - background
    t = ((crop - background) @ direction) / max(float(direction @ direction), 1.0)
    exact = (t > 0.5) & _grow(component[y0:y1, x0:x1])  # the component, grown over its blurred rim
    area = int(exact.sum())
    if area < min_area:
        return None
    ys, xs = np.nonzero(exact)
    bx0, by0, bx1, by1 = int(xs.min()) + x0, int(ys.min()) + y0, int(xs.max()) + x0 + 1, int(ys.max()) + y0 + 1
    fill = area / ((bx1 - bx0) * (by1 - by0))
    height, width = pixels.shape[:2]
    side = max(bx1 - bx0, by1 - by0) * REFERENCE_SIZE / width
    obj = Obj(_classify_shape(fill), colour, "large" if side > _SIZE_THRESHOLD else "small",
              _nearest_position((bx0 + bx1) / 2, (by0 + by1) / 2, width, height))
    return DetectedObject(obj, (bx0, by0, bx1, by1), area, fill)


def _grow(mask: np.ndarray, steps: int = 2) -> np.ndarray:
    """Binary dilation by `steps` px (4-neighbourhood)."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return mask


def detect(image: Image.Image, min_area: float = MIN_AREA) -> Detection:
    """Read a tiny-world image back into its background and objects.

    Args:
        image: a PIL image of any size (square expected; geometry is measured relative to its width/height).
        min_area: components smaller than this (px on the 128-px canvas) are ignored as specks.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background_name = nearest_colour(np.median(border, axis=0))
    background = np.asarray(PALETTE[background_name], dtype=np.float32)
    foreground = np.sqrt(((pixels - background) ** 2).sum(-1)) > FOREGROUND_DISTANCE
    labels = label_components(foreground)
    scaled_min = min_area * pixels.shape[0] * pixels.shape[1] / REFERENCE_SIZE**2
    found = []
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    for label, count in zip(ids, counts):
        if count >= scaled_min:
            measured = _measure(pixels, labels == label, background, scaled_min)
            if measured is not None:
                found.append(measured)
    found.sort(key=lambda d: -d.area)
    return Detection(background_name, tuple(found))
