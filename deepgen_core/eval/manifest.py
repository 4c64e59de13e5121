"""`manifest.json` of an evaluation folder: the benchmark, every generation setting, the model files' SHA-256 and
the library versions. It also guards the folder: a run refuses a folder written for another benchmark or with other
settings (resuming into it would mix two experiments)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import DeepGenInputError

MANIFEST = "manifest.json"
MODEL_SUFFIXES = {".safetensors", ".pt", ".pth", ".bin", ".json", ".gguf"}
LIBRARIES = ("torch", "transformers", "diffusers", "accelerate", "safetensors", "pillow", "numpy", "comfyui-deepgen")


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DeepGenInputError(f"--out {str(out)!r}: {MANIFEST} is not valid JSON ({exc.msg}); delete it only if the folder holds no results you need, or pick a new --out.") from exc


def check_out_dir(out: Path, benchmark: str, generation: dict[str, Any] | None) -> dict | None:
    """Raise when `out` holds another benchmark's results or (given `generation`) results made with other
    settings; return the old manifest (None for a new folder)."""
    if out.exists() and not out.is_dir():
        raise DeepGenInputError(f"--out {str(out)!r} is a file; pass a folder (it is created when missing).")
    old = read_manifest(out)
    if old is None:
        return None
    if old.get("benchmark") != benchmark:
        raise DeepGenInputError(
            f"--out {str(out)!r} holds {old.get('benchmark')!r} results (see its {MANIFEST}), not {benchmark!r}; "
            "give each benchmark its own --out folder."
        )
    changed = {k: (old.get("generation", {}).get(k), v) for k, v in (generation or {}).items() if old.get("generation", {}).get(k) != v}
    if changed:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise DeepGenInputError(
            f"--out {str(out)!r} was written with other settings ({listed}); resuming would mix two runs. Use the "
            "earlier settings to resume, or a new --out folder."
        )
    return old


def model_files(paths: list[Path]) -> list[Path]:
    """The weight and config files of the model paths (a file, or the files under a folder)."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES))
    return found


def sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: list[Path], cached: dict[str, dict] | None = None) -> dict[str, dict]:
    """{path: {sha256, bytes, mtime}}; a file whose size and mtime match `cached` keeps its recorded hash (a resumed
    run does not re-read many GB of weights)."""
    cached = cached or {}
    out = {}
    for path in paths:
        stat = path.stat()
        old = cached.get(str(path), {})
        if old.get("bytes") == stat.st_size and old.get("mtime") == stat.st_mtime and old.get("sha256"):
            out[str(path)] = old
        else:
            out[str(path)] = {"sha256": sha256(path), "bytes": stat.st_size, "mtime": stat.st_mtime}
    return out


DATA_SUFFIXES = {".json", ".jsonl", ".csv", ".txt", ".parquet", ".arrow"}


def data_digest(data: Path) -> str:
    """One SHA-256 over the benchmark's data files (the file itself, or the prompt/table files under a folder, by
    relative name), so a manifest tells which release of the prompts was run."""
    files = [data] if data.is_file() else sorted(p for p in data.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(data) if path != data else path.name}\0{sha256(path)}\n".encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    import torch

    versions["cuda"] = str(torch.version.cuda)
    return versions


def write_manifest(out: Path, content: dict) -> Path:
    """Write `manifest.json` atomically (temporary file, then rename)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(content, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
