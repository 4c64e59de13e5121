"""DeepGen's tiny VAE: TAESD key layout, the AutoencoderKL-like interface, use in the pipeline and the DiT
trainer, its own trainer, and its file in ComfyUI (real ComfyUI only with COMFYUI_DIR)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from deepgen_core.errors import CheckpointError, DeepGenInputError
from deepgen_core.latents import vae_scale_factor
from deepgen_core.loading import (
    is_converted,
    load_converted,
    load_vae_file,
    save_vae_file,
)
from deepgen_core.models.tiny_vae import DeepGenTinyVAE, tiny_taesd_vae
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import tiny_components
from deepgen_core.train.metrics import read_metrics
from deepgen_core.train.vae import (
    VAEConfig,
    latent_regulariser,
    load_vae_config,
    train_vae,
)
from deepgen_core.train.vae_data import load_images
from deepgen_core.vae_layout import comfy_taesd_to_state_dict, state_dict_to_comfy_taesd

REAL_COMFY = os.environ.get("COMFYUI_DIR")


def flat_shapes(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) uint8: a flat background with two flat rectangles/ellipses (the tiny world's look)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(2):
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
            x1, y1 = x0 + int(rng.integers(size // 4, size // 2)), y0 + int(rng.integers(size // 4, size // 2))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return torch.stack(out)


def small_config(tmp_path: Path, **overrides) -> VAEConfig:
    base = {"sources": [{"path": str(tmp_path / "unused.json")}], "image_size": 32, "holdout": 8, "batch_size": 16, "max_steps": 150, "channels": 8,
                "cpu": True, "output_dir": str(tmp_path / "run"), "resume": "never", "log_every": 10, "eval_every": 0, "save_every": 0, "progress_bar": False,
                "save_dtype": "fp32", "optim": {"lr": 2e-3, "warmup_steps": 10}}
    return VAEConfig(**(base | overrides))


# ------------------------------------------------------------------------------------------------ layout and interface


def test_key_round_trip_and_comfy_layout():
    state = tiny_taesd_vae(0, channels=8).state_dict()
    comfy = state_dict_to_comfy_taesd(state)
    # the decoder's first conv is index 1 in ComfyUI (its Sequential starts with the clamp), as ComfyUI detects TAESD
    assert torch.equal(comfy["taesd_decoder.1.weight"], state["decoder.layers.0.weight"])
    assert torch.equal(comfy["taesd_encoder.0.weight"], state["encoder.layers.0.weight"])
    assert comfy["vae_scale"].item() == 1.0 and comfy["vae_shift"].item() == 0.0
    back = comfy_taesd_to_state_dict(comfy)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_layout_errors_name_the_problem():
    comfy = state_dict_to_comfy_taesd(tiny_taesd_vae(0, channels=8).state_dict())
    with pytest.raises(CheckpointError, match="vae_scale = 2"):
        comfy_taesd_to_state_dict(comfy | {"vae_scale": torch.tensor(2.0)}, "x.safetensors")
    with pytest.raises(CheckpointError, match="outside the TAESD layout"):
        comfy_taesd_to_state_dict(comfy | {"extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no TAESD key"):
        state_dict_to_comfy_taesd({"quant_conv.weight": torch.zeros(1)})


def test_latent_dist_is_deterministic_and_the_scale_factor_is_8():
    vae = tiny_taesd_vae(0, channels=8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = vae.encode(x)
    dist = out.latent_dist
    assert out.latents.shape == (2, 16, 4, 4)
    assert torch.equal(dist.mean, out.latents) and torch.equal(dist.mode(), out.latents) and torch.equal(dist.sample(), out.latents)
    assert torch.count_nonzero(dist.std) == 0
    assert vae_scale_factor(vae) == 8 == vae_scale_factor(tiny_components().vae)
    assert vae.decode(out.latents).sample.shape == (2, 3, 32, 32)


def test_comfy_format_file_loads_with_identical_outputs(tmp_path):
    vae = tiny_taesd_vae(1, channels=8)
    path = save_vae_file(vae, tmp_path / "vae.safetensors")
    assert "taesd_decoder.1.weight" in load_file(str(path))
    loaded = load_vae_file(path)
    # a plain ComfyUI TAESD file (no DeepGen metadata) loads too, its config inferred from the keys
    save_file(load_file(str(path)), str(tmp_path / "plain.safetensors"))
    plain = load_vae_file(tmp_path / "plain.safetensors")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latents
        for other in (loaded, plain):
            assert isinstance(other, DeepGenTinyVAE)
            assert torch.equal(other.encode(x).latents, z)
            assert torch.equal(other.decode(z).sample, vae.decode(z).sample)


def test_a_4_channel_vae_file_is_refused_with_its_name(tmp_path):
    four = DeepGenTinyVAE(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4, latent_channels=4)
    path = save_vae_file(four, tmp_path / "taesd-sd1.safetensors")
    with pytest.raises(CheckpointError, match=r"taesd-sd1\.safetensors has 4 latent channels.*16"):
        load_vae_file(path)


def test_vae_tiling_decodes_large_latents():
    pipe = DeepGenPipeline.from_components(tiny_components())
    pipe.vae = tiny_taesd_vae(0, channels=8)
    z = torch.randn(1, 16, 24, 24)
    with torch.no_grad():
        full = pipe.vae.decode(z).sample
        pipe.enable_vae_tiling(tile_size=128)
        tiled = pipe.vae.decode(z).sample
        encoded = pipe.vae.encode(full).latents  # tiled encode is not used by the tiny VAE (see DeepGenTinyVAE)
    assert tiled.shape == full.shape == (1, 3, 192, 192) and encoded.shape == (1, 16, 24, 24)
    assert (tiled - full).abs().mean() < 0.05  # blended seams only


# ------------------------------------------------------------------------------------------------ pipeline and DiT trainer


def tiny_with_taesd():
    components = tiny_components()
    components.vae = tiny_taesd_vae(0, channels=8)
    return components


def test_pipeline_runs_end_to_end_and_converted_folder_round_trips(tmp_path):
    components = tiny_with_taesd()
    pipe = DeepGenPipeline.from_components(components)
    kwargs = {"height": 64, "width": 48, "num_inference_steps": 2, "generator": torch.Generator().manual_seed(0), "output_type": "pt"}
    image = pipe("a red circle", **kwargs).images
    assert image.shape == (1, 3, 64, 48)
    reference = torch.rand(3, 32, 32) * 2 - 1
    edit = pipe("make it blue", image=[Image.fromarray(((reference.permute(1, 2, 0) + 1) * 127.5).byte().numpy())], reference_size=64, **kwargs).images
    assert edit.shape == (1, 3, 64, 48)
    pipe.save_converted(tmp_path / "converted", dtype=None)
    assert is_converted(tmp_path / "converted")
    reloaded = load_converted(tmp_path / "converted", torch.float32)
    assert isinstance(reloaded.vae, DeepGenTinyVAE)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(DeepGenPipeline.from_components(reloaded)("a red circle", **kwargs).images, image)


def test_dit_training_loss_runs_with_the_tiny_vae():
    from deepgen_core.train.modeling import DeepGenTrainModel, StepNoise

    model = DeepGenTrainModel(tiny_with_taesd())
    pixels = [torch.rand(3, 64, 64) * 2 - 1, torch.rand(3, 64, 64) * 2 - 1]
    assert model.latent_shape(pixels[0]) == (16, 8, 8)
    noise = StepNoise(u=torch.tensor([0.3, 0.7]), noise=[torch.randn(16, 8, 8) for _ in pixels], target_eps=[torch.randn(16, 8, 8) for _ in pixels])
    out = model({"pixel_values": pixels, "texts": ["a", "b"]}, noise)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transformer.parameters())


# ------------------------------------------------------------------------------------------------ the VAE trainer


def test_latent_regulariser_is_zero_for_standard_latents():
    torch.manual_seed(0)
    # channel c has mean c/10 and std 1: the penalty is the mean of (c/10)^2 over c = 0..3 (variance term ~0)
    z = torch.randn(64, 4, 16, 16)
    z = (z - z.mean(dim=(0, 2, 3), keepdim=True)) / z.std(dim=(0, 2, 3), keepdim=True) + torch.arange(4).view(1, 4, 1, 1) / 10
    assert abs(latent_regulariser(z).item() - np.mean([(c / 10) ** 2 for c in range(4)])) < 1e-4


def test_training_lowers_the_loss_and_raises_psnr(tmp_path):
    images = flat_shapes(200, 32)
    config = small_config(tmp_path)
    result = train_vae(config, images=images)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first, last = metrics[10], metrics[150]
    assert last["loss"] < 0.6 * first["loss"], (first, last)
    assert last["psnr/train"] > first["psnr/train"] + 3
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["holdout_psnr_db"] == result.holdout_psnr > 11
    reloaded = load_vae_file(result.vae_file)
    assert isinstance(reloaded, DeepGenTinyVAE) and list(reloaded.config.encoder_block_out_channels) == [8] * 4


def test_resume_after_interruption_repeats_the_run(tmp_path):
    images = flat_shapes(40, 16)
    kw = {"image_size": 16, "batch_size": 4, "max_steps": 6, "log_every": 1, "save_every": 3, "keep_last": 2, "optim": {"lr": 1e-3, "warmup_steps": 1}}
    straight = train_vae(small_config(tmp_path / "a", **kw), images=images)
    interrupted = train_vae(small_config(tmp_path / "b", **kw), images=images)
    # simulate a kill right after the step-3 checkpoint: drop what steps 4-6 wrote
    run = interrupted.output_dir
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "vae.safetensors").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    resumed = train_vae(small_config(tmp_path / "b", **(kw | {"resume": "auto"})), images=images)
    assert len(resumed.losses) == 3  # it ran steps 4..6 only
    a, b = read_metrics(straight.output_dir / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [a[s]["loss"] for s in range(1, 7)] == [b[s]["loss"] for s in range(1, 7)]
    assert torch.equal(load_file(str(straight.vae_file))["taesd_decoder.1.weight"], load_file(str(resumed.vae_file))["taesd_decoder.1.weight"])


def test_decoder_only_fine_tuning_keeps_the_latent_space(tmp_path):
    """train_encoder: false (from init_vae) trains the decoder alone: encoder weights, and so every latent a DiT was
    trained on, stay bit-identical while the decoder learns; without init_vae it is refused."""
    images = flat_shapes(40, 16)
    kw = {"image_size": 16, "batch_size": 4, "max_steps": 5, "log_every": 1, "optim": {"lr": 1e-3, "warmup_steps": 1}}
    start = train_vae(small_config(tmp_path / "a", **kw), images=images).vae_file
    tuned = train_vae(small_config(tmp_path / "b", **kw, init_vae=str(start), train_encoder=False), images=images).vae_file
    before, after = load_file(str(start)), load_file(str(tuned))
    encoder = [k for k in before if k.startswith("taesd_encoder.")]
    decoder = [k for k in before if k.startswith("taesd_decoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    with pytest.raises(DeepGenInputError, match="give init_vae"):
        small_config(tmp_path, train_encoder=False)


def test_images_come_from_index_files_with_edit_inputs(tmp_path):
    from deepgen_core.train.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(tmp_path / "data", n=4, size=32)
    config = load_vae_config(None, [f"sources=[{{path: {paths['blip3o']}, format: blip3o}}, {{path: {paths['edit']}, format: edit}}]", "image_size=16"])
    images = load_images(config.sources, config.image_size)
    assert images.dtype == torch.uint8 and images.shape == (4 + 4 * 3, 3, 16, 16)  # edit: output + two inputs


def test_divergence_is_a_clear_error(tmp_path):
    config = small_config(tmp_path, max_steps=20, log_every=5, optim={"lr": 1e6, "warmup_steps": 0})
    with pytest.raises(DeepGenInputError, match=r"VAE training diverged: the loss is (nan|inf) by step \d+ .*lower optim.lr"):
        train_vae(config, images=flat_shapes(40, 32))


def test_image_caps_per_source_and_in_all(tmp_path, monkeypatch):
    """`max_images_per_source` caps each source (an edit record gives several images), `max_images` the total;
    the trainer passes both from its config."""
    from deepgen_core.train import vae as vae_module
    from deepgen_core.train.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(tmp_path / "data", n=4, size=32)
    sources = f"sources=[{{path: {paths['edit']}, format: edit}}, {{path: {paths['blip3o']}, format: blip3o}}]"
    config = load_vae_config(None, [sources, "image_size=16"])
    every = load_images(config.sources, 16)
    assert len(every) == 4 * 3 + 4
    capped = load_images(config.sources, 16, per_source=5)
    assert len(capped) == 5 + 4 and torch.equal(capped[:5], every[:5]) and torch.equal(capped[5:], every[12:])
    assert len(load_images(config.sources, 16, max_images=7)) == 7
    assert len(load_images(config.sources, 16, max_images=7, per_source=5)) == 7
    seen = {}
    monkeypatch.setattr(vae_module, "load_images", lambda *a, **k: seen.update(k) or every)
    monkeypatch.setattr(vae_module, "build_vae", lambda c: (_ for _ in ()).throw(RuntimeError("stop here")))
    with pytest.raises(RuntimeError, match="stop here"):
        vae_module.train_vae(load_vae_config(None, [sources, "image_size=16", "holdout=2", "cpu=true", "max_images=9", "max_images_per_source=5", f"output_dir={tmp_path / 'run'}"]))
    assert seen == {"max_images": 9, "per_source": 5}
    with pytest.raises(DeepGenInputError, match="max_images_per_source must be >= 1"):
        load_vae_config(None, [sources, "max_images_per_source=0"])


def test_bad_config_errors():
    with pytest.raises(DeepGenInputError, match="sources is empty"):
        VAEConfig()
    with pytest.raises(DeepGenInputError, match="multiple of 8"):
        VAEConfig(sources=[{"path": "x.json"}], image_size=30)
    with pytest.raises(DeepGenInputError, match="unknown config keys"):
        load_vae_config(None, ["sources=[{path: x.json}]", "batchsize=3"])


def test_shipped_recipe_parses():
    config = load_vae_config(Path(__file__).resolve().parents[1] / "train" / "recipes" / "tiny" / "vae.yaml")
    assert config.channels == 64 and config.image_size == 128 and config.batch_size == 64 and len(config.sources) == 3
    decoder = load_vae_config(Path(__file__).resolve().parents[1] / "train" / "recipes" / "tiny" / "vae_decoder.yaml")
    assert not decoder.train_encoder and decoder.init_vae == "{run}/vae/vae.safetensors" and decoder.output_dir == "{run}/vae-decoder"
    assert decoder.max_images_per_source == 24000 and len(decoder.sources) == 3 and decoder.channels == config.channels


# ------------------------------------------------------------------------------------------------ real ComfyUI


@pytest.mark.skipif(not REAL_COMFY, reason="needs a real ComfyUI checkout (set COMFYUI_DIR)")
def test_real_comfyui_loads_our_vae_file_with_identical_outputs(tmp_path):
    sys.path.insert(0, REAL_COMFY)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sd
    import comfy.utils

    vae = tiny_taesd_vae(3)  # the shipping width (64)
    path = save_vae_file(vae, tmp_path / "tiny-vae.safetensors")
    comfy_vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    assert comfy_vae.latent_channels == 16
    pixels = torch.rand(2, 64, 64, 3)  # IMAGE: channels-last in [0, 1]
    with torch.no_grad():
        ours_latents = vae.encode(pixels.movedim(-1, 1) * 2 - 1).latents
        ours_pixels = ((vae.decode(ours_latents).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    theirs_latents = comfy_vae.encode(pixels).float().cpu()
    theirs_pixels = comfy_vae.decode(ours_latents).float().cpu()
    assert (theirs_latents - ours_latents).abs().max() < 1e-4
    assert (theirs_pixels - ours_pixels).abs().max() < 1e-4
