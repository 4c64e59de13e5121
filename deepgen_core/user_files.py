"""Files a user names: input images (opened with clear errors, EXIF orientation applied) and output paths
(checked before any model work, so that a finished image is never lost to a bad path)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DeepGenInputError

MAX_IMAGE_PIXELS = 64 * 2**20  # larger inputs are refused before decoding (PIL's own bomb guard stops at 179 MP)


def open_image(source, name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image file (path or file object) with its EXIF orientation applied.

    Raises `DeepGenInputError` naming the file for a missing file, a file that is not an image, a truncated image or
    one above `max_pixels` (checked from the header, before the pixels are decoded)."""
    label = f"{name} {str(source)!r}" if isinstance(source, (str, os.PathLike)) else name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if width * height > max_pixels:
                raise DeepGenInputError(
                    f"{label} is {width}x{height} ({width * height / 1e6:.0f} megapixels); images above "
                    f"{max_pixels / 1e6:.0f} megapixels are refused: downscale it first.")
            image.load()
    except FileNotFoundError as exc:
        raise DeepGenInputError(f"{label} does not exist; check the path.") from exc
    except IsADirectoryError as exc:
        raise DeepGenInputError(f"{label} is a folder; pass an image file.") from exc
    except UnidentifiedImageError as exc:
        raise DeepGenInputError(f"{label} is not an image PIL can read (PNG, JPEG, WebP, ...); pass an image file.") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DeepGenInputError(f"{label} is too large to decode safely ({exc}); downscale it first.") from exc
    except OSError as exc:  # PIL reports truncated and corrupt data as OSError
        raise DeepGenInputError(f"{label} could not be decoded ({exc}); the file is truncated or corrupt: re-export or re-download it.") from exc
    return exif_upright(image)


def exif_upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (phone photos are stored sideways with a rotation tag)."""
    if image.getexif().get(0x0112, 1) in (1, None):
        return image
    return ImageOps.exif_transpose(image)


def save_extensions() -> dict[str, str]:
    """Lower-case file extension -> PIL format, for the formats PIL can write."""
    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def check_output_file(path: str | Path, name: str = "--out") -> Path:
    """Check that an image can be written to `path` (known extension, not a folder, a writable folder above it)
    without writing anything; raises `DeepGenInputError` with the fix otherwise."""
    path = Path(path)
    extensions = save_extensions()
    if path.is_dir() or str(path).endswith(os.sep):
        raise DeepGenInputError(f"{name} {str(path)!r} is a folder; give a file name such as {str(path / 'deepgen.png')!r}.")
    if path.suffix.lower() not in extensions:
        common = ", ".join(e for e in (".png", ".jpg", ".webp") if e in extensions)
        raise DeepGenInputError(f"{name} {str(path)!r} has the extension {path.suffix or '(none)'!r}, which no image writer knows; use {common}.")
    check_output_folder(path.parent, name, creates=str(path))
    return path


def check_output_folder(folder: str | Path, name: str = "--out", creates: str | None = None) -> Path:
    """Check that `folder` is, or can be created as, a writable folder (nothing is written or created)."""
    folder = Path(folder) if str(folder) else Path(".")
    what = f"{name} {creates or str(folder)!r}"
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise DeepGenInputError(f"{what}: {str(existing)!r} is a file, not a folder; choose another location.")
    if not _writable(existing):
        raise DeepGenInputError(f"{what}: the folder {str(existing)!r} is not writable; choose a folder you can write to.")
    return folder


def _writable(folder: Path) -> bool:
    """os.access, then a real probe file (access() is wrong for root, ACLs and read-only mounts)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True
