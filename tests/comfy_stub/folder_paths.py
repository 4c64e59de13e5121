"""Stand-in for ComfyUI's `folder_paths` (model folder registry), rooted in a directory set by the tests."""

from __future__ import annotations

import os
import tempfile

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
base_path = tempfile.mkdtemp(prefix="comfy-stub-")
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
    key: ([os.path.join(models_dir, key)], set(supported_pt_extensions)) for key in ("diffusion_models", "vae", "text_encoders", "clip_vision")
}
folder_names_and_paths["diffusers"] = ([os.path.join(models_dir, "diffusers")], {"folder"})  # as ComfyUI: folders, not files
_temp_directory = os.path.join(base_path, "temp")
_output_directory = os.path.join(base_path, "output")


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    paths = folder_names_and_paths.setdefault(folder_name, ([], set()))[0]
    if full_folder_path in paths:
        return
    if is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name: str) -> list[str]:
    paths, exts = folder_names_and_paths[folder_name]
    found = set()
    for base in paths:
        for root, dirs, files in os.walk(base, followlinks=True):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in files:
                if not exts or os.path.splitext(name)[1].lower() in exts:
                    found.add(os.path.relpath(os.path.join(root, name), base).replace(os.sep, "/"))
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    for base in folder_names_and_paths[folder_name][0]:
        path = os.path.join(base, os.path.normpath(filename))
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_temp_directory() -> str:
    return _temp_directory


def set_temp_directory(temp_dir: str) -> None:
    global _temp_directory
    _temp_directory = temp_dir


def get_output_directory() -> str:
    return _output_directory


def set_output_directory(output_dir: str) -> None:
    global _output_directory
    _output_directory = output_dir
