"""Files DeepGen reads and writes: `from_pretrained` errors in one sentence, and the permissions of written files.

safetensors (and so `save_pretrained`) creates files with mode 0600 whatever the umask, which hides converted and
exported weights from a ComfyUI running as another user. Written files get the mode a plain `open()` would give:
0666 without the process umask. The umask is read from a probe file, never by `os.umask` (process-wide, racy).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import CheckpointError

T = TypeVar("T")


def default_file_mode(folder: str | Path) -> int:
    """The mode a new file in `folder` gets from `open()`: 0o666 minus the umask."""
    probe = Path(folder) / f".deepgen-mode-probe-{os.getpid()}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def honour_umask(*paths: str | Path) -> None:
    """Give each file (folders: every file below) the umask's default mode."""
    modes: dict[Path, int] = {}
    for path in map(Path, paths):
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            mode = modes.setdefault(file.parent, default_file_mode(file.parent))
            os.chmod(file, mode)


def load_pretrained_folder(load: Callable[[], T], what: str) -> T:
    """`load()` (a library's `from_pretrained` on a local folder), its failures turned into one `CheckpointError`
    sentence that names `what` (the folder) and the fix."""
    try:
        return load()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{what} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); a file may be truncated: download it again.") from None
    except Exception as exc:  # safetensors' SafetensorError for a damaged file (no importable base class)
        if type(exc).__name__ != "SafetensorError":
            raise
        raise CheckpointError(f"{what}: a weights file is damaged ({exc}); download it again.") from None
