"""Shared fixtures: the reference-tiny golden files and pipelines loaded from them through the public API."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The reference fixtures ship with the tests; DEEPGEN_FIXTURES points at an external copy instead.
FIXTURES = Path(os.environ.get("DEEPGEN_FIXTURES", Path(__file__).resolve().parent / "fixtures" / "reference-tiny"))


def pytest_collection_modifyitems(config, items):
    if not FIXTURES.is_dir():
        skip = pytest.mark.skip(reason=f"reference fixtures not found at {FIXTURES} (set DEEPGEN_FIXTURES)")
        for item in items:
            if "fixture_dir" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)


# Skips a fresh clone on a CPU machine is expected to have, by category: (label, pattern on the skip reason, how to run them).
EXPECTED_SKIPS = (
    ("GPU", re.compile(r"CUDA|GPU", re.I), "run on a CUDA machine"),
    ("real-ComfyUI", re.compile(r"COMFYUI_DIR|real ComfyUI", re.I), "set COMFYUI_DIR, and COMFY_PYTHON for the server tests"),
)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter):
    """One line per expected skip category instead of one per test; any other skip is listed by reason, prefixed
    `SKIPPED (unexpected)` (CI fails on it: a fresh clone must run everything but GPU and real-ComfyUI tests)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    counts: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    for report in skipped:
        reason = _skip_reason(report)
        label = next((label for label, pattern, _ in EXPECTED_SKIPS if pattern.search(reason)), None)
        if label:
            counts[label] += 1
        else:
            unexpected[reason] += 1
    for label, _, how in EXPECTED_SKIPS:
        if counts[label]:
            plural = "s" if counts[label] != 1 else ""
            terminalreporter.write_line(f"SKIPPED {counts[label]} {label} test{plural} ({how})")
    for reason, n in unexpected.items():
        terminalreporter.write_line(f"SKIPPED (unexpected) {n}: {reason}")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def manifest(fixture_dir) -> dict:
    return json.loads((fixture_dir / "manifest.json").read_text())["files"]


@pytest.fixture(scope="session")
def golden(fixture_dir):
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            cache[name] = load_file(str(fixture_dir / "outputs" / f"{name}.safetensors"))
        return cache[name]

    return get


def assert_parity(ours: torch.Tensor, ref: torch.Tensor, name: str, factor: float = 1e-4) -> None:
    """The acceptance tolerance: max |ours - ref| <= factor * (1 + max |ref|)."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    err = (ours.detach().float() - ref.float()).abs().max().item()
    bound = factor * (1 + ref.float().abs().max().item())
    assert err <= bound, f"{name}: max |diff| {err:.3g} > {bound:.3g}"


def _release_pipeline(fixture_dir: Path, checkpoint: Path):
    from deepgen_core.pipeline import DeepGenPipeline

    base = fixture_dir / "base"
    return DeepGenPipeline.from_pretrained(
        checkpoint, vlm=base / "qwen2_5_vl", diffusion=base / "sd35_kontext",
        config=fixture_dir / "deepgen_config.json", torch_dtype=torch.float32,
    )


@pytest.fixture(scope="session", params=["safetensors", "model_pt", "mmengine_pth", "converted", "diffusers", "diffusers_convert"])
def pipe(request, fixture_dir, tmp_path_factory):
    """The fixture model loaded every way it is published (fp32, so the comparison stays exact): the checkpoint
    as given, a `torch.save`d `model.pt`, an mmengine training checkpoint, the output of `deepgen convert`, the
    authors' DeepGen-1.0-diffusers layout, and that layout as `deepgen convert --layout diffusers` writes it."""
    from deepgen_core.pipeline import DeepGenPipeline
    from layouts import diffusers_standin, mmengine_checkpoint

    ckpt = fixture_dir / "deepgen_checkpoint.safetensors"
    if request.param == "safetensors":
        return _release_pipeline(fixture_dir, ckpt)
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "model_pt":
        torch.save(load_file(str(ckpt)), tmp / "model.pt")
        return _release_pipeline(fixture_dir, tmp / "model.pt")
    if request.param == "mmengine_pth":
        return _release_pipeline(fixture_dir, mmengine_checkpoint(load_file(str(ckpt)), tmp / "iter_400000.pth"))
    if request.param == "diffusers":
        return DeepGenPipeline.from_pretrained(diffusers_standin(fixture_dir, tmp / "DeepGen-1.0-diffusers"), torch_dtype=torch.float32)
    from deepgen_core.cli import main

    base = fixture_dir / "base"
    layout = "diffusers" if request.param == "diffusers_convert" else "safetensors"
    rc = main(["convert", "--model", str(ckpt), "--vlm", str(base / "qwen2_5_vl"), "--diffusion", str(base / "sd35_kontext"),
               "--config", str(fixture_dir / "deepgen_config.json"), "--out", str(tmp), "--dtype", "fp32", "--layout", layout])
    assert rc == 0
    return DeepGenPipeline.from_pretrained(tmp, torch_dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_pipe():
    from deepgen_core.pipeline import DeepGenPipeline
    from deepgen_core.presets import tiny_components

    return DeepGenPipeline.from_components(tiny_components(seed=0))
