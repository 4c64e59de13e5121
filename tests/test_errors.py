"""Bad input gets a clear error naming the input and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepgen_core.errors import CheckpointError, DeepGenInputError
from deepgen_core.image_processing import prepare_reference, to_rgb
from deepgen_core.pipeline import DeepGenPipeline


def _run(pipe, **kw):
    args = dict(prompt="a cat", num_inference_steps=1, height=64, width=64, output_type="latent", generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return pipe(**args)


@pytest.mark.parametrize("size,msg", [(100, "multiple of 16"), (0, "positive multiple"), (-32, "positive multiple")])
def test_size_not_multiple_of_16(tiny_pipe, size, msg):
    with pytest.raises(DeepGenInputError, match=f"height.*{msg}"):
        _run(tiny_pipe, height=size)


def test_size_suggests_nearest(tiny_pipe):
    with pytest.raises(DeepGenInputError, match="nearest valid value is 96"):
        _run(tiny_pipe, width=100)


def test_size_above_position_table(tiny_pipe):
    limit = tiny_pipe.max_image_size
    with pytest.raises(DeepGenInputError, match=f"exceeds the DiT position table \\({limit} px\\)"):
        _run(tiny_pipe, height=limit + 16)


def test_real_size_position_limit_is_6144():
    import inspect

    from deepgen_core.models.transformer import DeepGenSD3Transformer

    params = inspect.signature(DeepGenSD3Transformer.__init__).parameters  # defaults are the SD3.5-M values
    assert params["pos_embed_max_size"].default * params["patch_size"].default * 8 == 6144


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_steps(tiny_pipe, steps):
    with pytest.raises(DeepGenInputError, match="num_inference_steps must be an integer >= 1"):
        _run(tiny_pipe, num_inference_steps=steps)


def test_negative_guidance(tiny_pipe):
    with pytest.raises(DeepGenInputError, match="guidance_scale must be a number >= 0"):
        _run(tiny_pipe, guidance_scale=-1.0)


def test_empty_prompt_is_valid(tiny_pipe):
    out = _run(tiny_pipe, prompt="")
    assert out.latents.shape == (1, 16, 8, 8) and torch.isfinite(out.latents).all()


def test_empty_reference_batch(tiny_pipe):
    with pytest.raises(DeepGenInputError, match="empty reference list"):
        _run(tiny_pipe, prompt=["a"], image=[[]])


def test_tiny_reference_rejected(tiny_pipe):
    with pytest.raises(DeepGenInputError, match="reference image 0 of prompt 0 is 10x12 px.*at least 32"):
        _run(tiny_pipe, image=Image.new("RGB", (10, 12)))


def test_reference_not_an_image(tiny_pipe):
    with pytest.raises(DeepGenInputError, match="image must be a PIL image"):
        _run(tiny_pipe, image="photo.png")


def test_rgba_composited_over_white():
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red -> white
    img.putpixel((0, 0), (0, 0, 255, 255))
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.getpixel((5, 5)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (0, 0, 255)


def test_grayscale_and_16bit_converted():
    gray = Image.new("L", (64, 64), 128)
    assert to_rgb(gray).getpixel((1, 1)) == (128, 128, 128)
    sixteen = Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert to_rgb(sixteen).getpixel((1, 1)) == (255, 255, 255)
    pixels = prepare_reference(sixteen)
    assert pixels.shape == (3, 64, 64) and torch.allclose(pixels, torch.ones_like(pixels))


def test_resize_policy_none_requires_multiple_of_32():
    with pytest.raises(DeepGenInputError, match="multiples of 32.*nearest: 64x64"):
        prepare_reference(Image.new("RGB", (50, 64)), policy="none")


def test_mismatched_negative_prompts(tiny_pipe):
    with pytest.raises(DeepGenInputError, match="negative_prompt must be a string or a list of 2 strings"):
        _run(tiny_pipe, prompt=["a", "b"], negative_prompt=["x"])


def test_missing_model_dir(tmp_path):
    with pytest.raises(DeepGenInputError, match="does not exist"):
        DeepGenPipeline.from_pretrained(tmp_path / "nope")


def test_release_needs_base_folders(tmp_path, fixture_dir):
    ckpt = fixture_dir / "deepgen_checkpoint.safetensors"
    with pytest.raises(CheckpointError, match="Qwen2.5-VL folder is required"):
        DeepGenPipeline.from_pretrained(ckpt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder .* is empty"):
        DeepGenPipeline.from_pretrained(ckpt, vlm=tmp_path / "empty", diffusion=tmp_path)
    with pytest.raises(CheckpointError, match="has no transformer/ subfolder"):
        DeepGenPipeline.from_pretrained(ckpt, vlm=fixture_dir / "base" / "qwen2_5_vl", diffusion=fixture_dir / "base" / "qwen2_5_vl")


def _release(fixture_dir, ckpt, **kw):
    base = fixture_dir / "base"
    return DeepGenPipeline.from_pretrained(ckpt, vlm=base / "qwen2_5_vl", diffusion=base / "sd35_kontext", torch_dtype=torch.float32, **kw)


@pytest.mark.parametrize("content,msg", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
    (b"<!DOCTYPE html><html></html>", "HTML page"),
    (b"\x89PNG\r\n\x1a\n0000", "an image"),
    (b"", "empty"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "not a valid safetensors file"),
])
def test_wrong_file_kinds(tmp_path, fixture_dir, content, msg):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=msg):
        _release(fixture_dir, bad)


def test_wrong_extension(tmp_path, fixture_dir):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF0000")
    with pytest.raises(CheckpointError, match="unsupported extension '.gguf'"):
        _release(fixture_dir, bad)


def test_pickle_with_code_runs_nothing_and_is_refused(tmp_path, fixture_dir):
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "model.pt"
    torch.save({"meta_queries": Evil()}, path)
    with pytest.raises(CheckpointError, match="model.pt holds no model weights"):
        _release(fixture_dir, path)
    assert not marker.exists()


def test_checkpoint_config_shape_mismatch(tmp_path, fixture_dir):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(fixture_dir / "deepgen_checkpoint.safetensors"))
    sd["transformer.proj_out.weight"] = torch.zeros(8, 8)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="DiT weights does not fit.*shape mismatch.*proj_out.weight"):
        _release(fixture_dir, tmp_path / "bad.safetensors", config=fixture_dir / "deepgen_config.json")


def test_declared_config_disagrees(tmp_path, fixture_dir):
    (tmp_path / "cfg.json").write_text('{"num_queries": 64, "connector": {"hidden_size": 64}}')
    with pytest.raises(CheckpointError, match="num_think_tokens: config 64 vs weights 128"):
        _release(fixture_dir, fixture_dir / "deepgen_checkpoint.safetensors", config=tmp_path / "cfg.json")


def test_unknown_keys_reported(tmp_path, fixture_dir):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(fixture_dir / "deepgen_checkpoint.safetensors"))
    sd["ema.something.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="keys DeepGen does not know: ema.something"):
        _release(fixture_dir, tmp_path / "x.safetensors")


def test_dit_only_file_is_not_a_deepgen_checkpoint(tmp_path, fixture_dir):
    from safetensors.torch import load_file, save_file

    sd = {k: v for k, v in load_file(str(fixture_dir / "deepgen_checkpoint.safetensors")).items() if k.startswith("transformer.")}
    save_file(sd, str(tmp_path / "dit.safetensors"))
    with pytest.raises(CheckpointError, match="lacks 'think_tokens'"):
        _release(fixture_dir, tmp_path / "dit.safetensors")


def test_converted_wrong_component(tmp_path, tiny_pipe):
    from deepgen_core.loading import load_converted_vae

    files = tiny_pipe.save_converted(tmp_path, torch.float32)
    with pytest.raises(CheckpointError, match="not a DeepGen vae file \\(it says: transformer\\)"):
        load_converted_vae(files["deepgen-transformer.safetensors"], torch.float32)


def test_cli_reports_errors_cleanly(capsys, tmp_path, monkeypatch):
    import deepgen_core.presets
    from deepgen_core.cli import main
    from deepgen_core.pipeline import DeepGenPipeline
    from deepgen_core.presets import tiny_components

    DeepGenPipeline.from_components(tiny_components(seed=0)).save_converted(tmp_path / "tiny", dtype=None)
    assert main(["generate", "--model", str(tmp_path / "tiny"), "--prompt", "x", "--height", "100", "--out", str(tmp_path / "never.png")]) == 2
    assert "height must be a positive multiple of 16" in capsys.readouterr().err
    monkeypatch.setattr(deepgen_core.presets, "DEEPGEN_TINY_DIR", tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match="embedded DeepGen-Tiny is missing"):
        deepgen_core.presets.deepgen_tiny_dir()


def test_cli_without_weights_falls_back_to_the_untrained_architecture(tmp_path, monkeypatch, caplog):
    """No --model and no embedded weights: the command still works (seeded random DeepGen-Tiny) and says so."""
    import deepgen_core.presets
    from deepgen_core.cli import main

    monkeypatch.setattr(deepgen_core.presets, "DEEPGEN_TINY_DIR", tmp_path / "not-installed")
    out = tmp_path / "noise.png"
    assert main(["generate", "--prompt", "x", "--steps", "2", "--out", str(out)]) == 0
    assert "RANDOM weights" in caplog.text and "embedded DeepGen-Tiny is missing" in caplog.text
    assert Image.open(out).size == (128, 128)  # DeepGen-Tiny's default size
