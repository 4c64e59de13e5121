"""File permissions of what DeepGen writes.

safetensors (and so `save_pretrained`) creates files with mode 0600 whatever the umask, which hides converted and
exported weights from a ComfyUI running as another user. Written files get the mode a plain `open()` would give:
0666 without the process umask. The umask is read from a probe file, never by `os.umask` (process-wide, racy).
"""

from __future__ import annotations

import os
from pathlib import Path


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
