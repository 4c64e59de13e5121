"""The ComfyUI loader on the layouts DeepGen is published in: a DeepGen-1.0-diffusers folder in models/deepgen or
models/diffusers, a stage `.pth` beside its base folders, and files that are not DeepGen at all. Runs on the stub,
or on real ComfyUI when COMFYUI_DIR is set (see test_nodes.py)."""

from __future__ import annotations

import shutil

import pytest
import torch
from layouts import EXECUTED_MARKER, diffusers_standin, mmengine_checkpoint
from safetensors.torch import load_file, save_file
from test_nodes import REAL_COMFY, _encode, _sample, comfy, model_files, pack  # noqa: F401  (fixtures)

from deepgen_core.latents import to_vae_space
from deepgen_core.pipeline import DeepGenPipeline


@pytest.fixture(scope="module")
def layouts(comfy, fixture_dir, tmp_path_factory):  # noqa: F811
    """models/deepgen with a diffusers folder, a stage .pth beside the base folders, and a foreign file;
    models/diffusers with another copy of the diffusers folder and a plain SD3 diffusers folder."""
    root = tmp_path_factory.mktemp("layout-models")
    deepgen, diffusers = root / "deepgen", root / "diffusers"
    diffusers_standin(fixture_dir, deepgen / "DeepGen-1.0-diffusers")
    diffusers_standin(fixture_dir, diffusers / "DeepGen-diffusers-copy")
    shutil.copytree(fixture_dir / "base" / "sd35_kontext", diffusers / "sd3-medium")
    (diffusers / "sd3-medium" / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    for name in ("qwen2_5_vl", "sd35_kontext"):
        shutil.copytree(fixture_dir / "base" / name, deepgen / name)
    shutil.copy(fixture_dir / "deepgen_config.json", deepgen)
    mmengine_checkpoint(load_file(str(fixture_dir / "deepgen_checkpoint.safetensors")), deepgen / "iter_400000.pth")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(deepgen / "sd15-pruned.safetensors"))
    comfy.folder_paths.add_model_folder_path("deepgen", str(deepgen))
    comfy.folder_paths.add_model_folder_path("diffusers", str(diffusers))
    return {"deepgen": deepgen, "diffusers": diffusers}


def _options(pack) -> list[str]:  # noqa: F811
    return {i.id: i for i in pack.nodes.loading.DeepGenLoader.define_schema().inputs}["model_name"].options


def _load(pack, name, model_files):  # noqa: F811
    # Real ComfyUI's VAE loader knows only real-size SD3 VAEs: take model_files' one there (the decode is not compared).
    vae = "tiny-vae.safetensors" if REAL_COMFY else "(from model)"
    return pack.nodes.loading.DeepGenLoader.execute(model_name=name, transformer_name="(from model)", vae_name=vae, dtype="fp32").args[0]


def _assert_samples_equal_pipeline(pack, model, pipe):  # noqa: F811
    positive, negative = _encode(pack, model)
    out = _sample(pack, model, positive, negative)["samples"]
    ref = pipe("a red circle", height=64, width=64, num_inference_steps=3, generator=torch.Generator().manual_seed(7), output_type="latent").latents
    torch.testing.assert_close(out, to_vae_space(ref), atol=1e-5, rtol=1e-5)


def test_loader_lists_every_layout_and_no_foreign_folder(pack, layouts, model_files):  # noqa: F811
    options = _options(pack)
    for name in ("DeepGen-1.0-diffusers/", "DeepGen-diffusers-copy/", "iter_400000.pth", "sd15-pruned.safetensors"):
        assert name in options, name
    assert "sd3-medium/" not in options
    assert not any(o.startswith(("qwen2_5_vl", "sd35_kontext", "DeepGen-1.0-diffusers/")) and o != "DeepGen-1.0-diffusers/" for o in options)


@pytest.mark.parametrize("name,where", [("DeepGen-1.0-diffusers/", "deepgen"), ("DeepGen-diffusers-copy/", "diffusers")])
def test_diffusers_folder_loads_and_samples_like_the_pipeline(pack, layouts, model_files, name, where):  # noqa: F811
    model = _load(pack, name, model_files)
    folder = layouts[where] / name.rstrip("/")
    _assert_samples_equal_pipeline(pack, model, DeepGenPipeline.from_pretrained(folder, torch_dtype=torch.float32))
    assert not (folder / EXECUTED_MARKER).exists(), "deepgen_pipeline.py (remote code) was executed"


def test_stage_pth_loads_over_the_base_folders_beside_it(pack, layouts, model_files, fixture_dir):  # noqa: F811
    model = _load(pack, "iter_400000.pth", model_files)
    base = fixture_dir / "base"
    pipe = DeepGenPipeline.from_pretrained(fixture_dir / "deepgen_checkpoint.safetensors", vlm=base / "qwen2_5_vl", diffusion=base / "sd35_kontext", torch_dtype=torch.float32)
    _assert_samples_equal_pipeline(pack, model, pipe)


def test_a_file_that_is_not_deepgen_is_named_as_such(pack, layouts, model_files):  # noqa: F811
    with pytest.raises(ValueError, match="sd15-pruned.safetensors is not a DeepGen model \\(it looks like a Stable Diffusion / SDXL checkpoint\\); models/deepgen expects") as info:
        _load(pack, "sd15-pruned.safetensors", model_files)
    assert "VLM + SCB" not in str(info.value)
    import folder_paths

    # A converted DiT file dropped into models/deepgen is told where it belongs.
    shutil.copy(folder_paths.get_full_path_or_raise("diffusion_models", "tiny-transformer.safetensors"), layouts["deepgen"] / "dit-here.safetensors")
    with pytest.raises(ValueError, match="dit-here.safetensors is the DeepGen transformer file of `deepgen convert`: it belongs in models/diffusion_models"):
        _load(pack, "dit-here.safetensors", model_files)
