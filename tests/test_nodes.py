"""The ComfyUI node pack: schema contract and execution on the tiny model.

Runs against the stand-in `tests/comfy_stub` (CI has no ComfyUI), or against a real ComfyUI checkout when
`COMFYUI_DIR` is set (then ComfyUI's own `comfy_api`, `folder_paths`, ModelPatcher and VAE are used).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from deepgen_core.latents import to_vae_space
from deepgen_core.loading import save_converted
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import deepgen_tiny_architecture, sd3_vae, tiny_components

REPO = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "comfy_stub"
REAL_COMFY = os.environ.get("COMFYUI_DIR")
NODE_IDS = {"DeepGenLoader", "DeepGenVLMEncode", "DeepGenThinkTokens", "DeepGenReferenceLatent", "DeepGenSampler", "DeepGenOCRReward", "DeepGenRolloutPreview",
            "DeepGenTorchCompile", "DeepGenDiTLoader", "DeepGenCLIPLoader", "DeepGenVAELoader", "DeepGenTextEncodeEdit"}


@pytest.fixture(scope="module")
def pack():
    if REAL_COMFY:
        sys.path.insert(0, REAL_COMFY)
        from comfy.cli_args import args

        args.cpu = True  # before comfy.model_management is imported (no GPU driver on CI machines)
    else:
        sys.path.insert(0, str(STUB))
    if "deepgen_pack" not in sys.modules:  # imported the way ComfyUI does: the folder as a package, by path
        spec = importlib.util.spec_from_file_location("deepgen_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["deepgen_pack"] = module
        spec.loader.exec_module(module)
    importlib.import_module("deepgen_pack.nodes")
    importlib.import_module("deepgen_pack.deepgen_core.image_processing")
    return sys.modules["deepgen_pack"]


@pytest.fixture(scope="module")
def comfy(pack):
    import comfy.model_management
    import folder_paths
    import node_helpers

    return type("Comfy", (), {"mm": comfy.model_management, "folder_paths": folder_paths, "node_helpers": node_helpers})


@pytest.fixture(scope="module")
def model_files(comfy, tmp_path_factory):
    """The tiny model converted to safetensors (fp32) and placed in the deepgen / diffusion_models / vae folders.
    Against real ComfyUI its VAE is an SD3-architecture one (ComfyUI's VAE loader knows no other layout)."""
    root = tmp_path_factory.mktemp("models")
    components = tiny_components(seed=0)
    if REAL_COMFY:  # ComfyUI's VAE loader only knows the real SD3 VAE architecture: random weights at real size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            components.vae = sd3_vae().eval()
    DeepGenPipeline.from_components(components).save_converted(root / "converted", dtype=None)
    for key, name in (("deepgen", "encoder"), ("diffusion_models", "transformer"), ("vae", "vae")):
        (root / key).mkdir()
        shutil.copy(root / "converted" / f"deepgen-{name}.safetensors", root / key / f"tiny-{name}.safetensors")
        comfy.folder_paths.add_model_folder_path(key, str(root / key))
    shutil.copytree(root / "converted", root / "deepgen" / "tiny-folder")
    return components


@pytest.fixture(scope="module")
def loaded(pack, model_files):
    loader = pack.nodes.loading.DeepGenLoader
    model, vae = loader.execute(model_name="tiny-encoder.safetensors", transformer_name="tiny-transformer.safetensors", vae_name="tiny-vae.safetensors", dtype="fp32").args
    return model, vae


def _nodes(pack) -> dict:
    return {n.define_schema().node_id: n for n in asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())}


def _encode(pack, model, prompt="a red circle", negative="", **kw):
    return pack.nodes.conditioning.DeepGenVLMEncode.execute(model=model, prompt=prompt, negative_prompt=negative, **kw).args


def _sample(pack, model, positive, negative, batch=1, size=(64, 64), seed=7, steps=3, cfg=4.0, **kw):
    latent = {"samples": torch.zeros(batch, 16, size[1] // 8, size[0] // 8)} | kw.pop("latent_extra", {})
    return pack.nodes.sampling.DeepGenSampler.execute(model=model, positive=positive, negative=negative, latent_image=latent, seed=seed, steps=steps, cfg=cfg, shift=3.0, **kw).args[0]


# ------------------------------------------------------------------------------------------------ schema


def test_entrypoint_lists_every_node_and_no_v1_mappings(pack):
    assert set(_nodes(pack)) == NODE_IDS
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # ComfyUI would ignore comfy_entrypoint


def test_schema_contract(pack, model_files):
    for node_id, node in _nodes(pack).items():
        schema = node.define_schema()
        schema.validate()
        assert schema.category.startswith("DeepGen/") and schema.description and schema.display_name.startswith("DeepGen"), node_id
        missing = [i.id for i in schema.inputs if not i.tooltip]
        assert not missing, f"{node_id} inputs without tooltip: {missing}"
        assert all(o.display_name and o.tooltip for o in schema.outputs), node_id


def test_sampler_schema_defaults(pack):
    inputs = {i.id: i for i in pack.nodes.sampling.DeepGenSampler.define_schema().inputs}
    assert (inputs["steps"].default, inputs["cfg"].default, inputs["shift"].default) == (50, 4.0, 3.0)
    assert inputs["seed"].control_after_generate is True
    assert inputs["sampler"].options == ["euler", "cps_sde", "flowgrpo_sde", "dance_sde"]
    assert inputs["model"].get_io_type() == "DEEPGEN_MODEL"
    assert pack.nodes.sampling.DeepGenSampler.validate_inputs(sampler="ddim").startswith("sampler 'ddim'")
    assert pack.nodes.sampling.DeepGenSampler.validate_inputs(sampler="euler") is True


def test_loader_lists_files_and_folders_and_keeps_yaml_paths(pack, comfy, model_files, tmp_path):
    inputs = {i.id: i for i in pack.nodes.loading.DeepGenLoader.define_schema().inputs}
    assert "tiny-encoder.safetensors" in inputs["model_name"].options and "tiny-folder/" in inputs["model_name"].options
    assert not any(o.startswith("tiny-folder/deepgen") for o in inputs["model_name"].options)
    assert "tiny-transformer.safetensors" in inputs["transformer_name"].options
    extra = str(tmp_path / "yaml-deepgen")
    comfy.folder_paths.add_model_folder_path("deepgen", extra)  # as extra_model_paths.yaml does before packs load
    pack.nodes.loading.register_folder()
    paths, exts = comfy.folder_paths.folder_names_and_paths["deepgen"]
    assert extra in paths and any(p.endswith(os.path.join("models", "deepgen")) for p in paths) and ".safetensors" in exts


# ------------------------------------------------------------------------------------------------ execution


def test_text_to_image_matches_the_pipeline_and_native_decode(pack, loaded, model_files):
    model, vae = loaded
    positive, negative = _encode(pack, model)
    assert positive[0][0].shape[0] == 1 and positive[0][1]["pooled_output"].shape == (1, 40)
    _assert_equals_pipeline(DeepGenPipeline.from_components(model_files), "a red circle", _sample(pack, model, positive, negative), vae)


def _assert_equals_pipeline(pipe: DeepGenPipeline, prompt: str, out: dict, vae) -> None:
    """`out` (the sampler's LATENT for `_sample`'s defaults) and its native VAEDecode equal the core pipeline's."""
    kwargs = {"height": 64, "width": 64, "num_inference_steps": 3}
    ref = pipe(prompt, generator=torch.Generator().manual_seed(7), output_type="latent", **kwargs).latents
    torch.testing.assert_close(out["samples"], to_vae_space(ref), atol=1e-5, rtol=1e-5)
    ours = pipe(prompt, generator=torch.Generator().manual_seed(7), output_type="pt", **kwargs).images
    torch.testing.assert_close(vae.decode(out["samples"]).float().cpu(), ours.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_edit_with_reference_latent_matches_the_pipeline(pack, loaded, model_files):
    model, vae = loaded
    image = torch.randint(0, 256, (1, 64, 96, 3), generator=torch.Generator().manual_seed(0)).float() / 255  # an 8-bit image, as LoadImage gives
    pil = pack.deepgen_core.image_processing.channels_last_to_pil(image)[0]
    positive, negative = _encode(pack, model, prompt="make it blue", image_1=image)
    positive, latent = pack.nodes.conditioning.DeepGenReferenceLatent.execute(conditioning=positive, image=image, vae=vae).args
    assert latent["samples"].shape == (1, 16, 8, 12)
    out = _sample(pack, model, positive, negative, size=(96, 64))
    pipe = DeepGenPipeline.from_components(model_files)
    ref = pipe("make it blue", image=pil, num_inference_steps=3, generator=torch.Generator().manual_seed(7), reference_latent_mode="mode", output_type="latent").latents
    torch.testing.assert_close(out["samples"], to_vae_space(ref), atol=1e-4, rtol=1e-4)
    # the built-in ReferenceLatent (VAEEncode output appended under the same key) feeds the sampler identically
    plain, _ = _encode(pack, model, prompt="make it blue", image_1=image)
    builtin = pack.nodes.conditioning.node_helpers.conditioning_set_values(plain, {"reference_latents": [vae.encode(image)]}, append=True)
    torch.testing.assert_close(_sample(pack, model, builtin, negative, size=(96, 64))["samples"], out["samples"], atol=1e-4, rtol=1e-4)


def test_seeds_batches_and_samplers(pack, loaded):
    model, _ = loaded
    positive, negative = _encode(pack, model)
    a, b = _sample(pack, model, positive, negative, seed=1), _sample(pack, model, positive, negative, seed=1)
    assert torch.equal(a["samples"], b["samples"])
    assert not torch.equal(a["samples"], _sample(pack, model, positive, negative, seed=2)["samples"])
    pair = _sample(pack, model, positive, negative, batch=2, seed=1, latent_extra={"batch_index": [0, 1]})["samples"]
    second = _sample(pack, model, positive, negative, batch=1, seed=1, latent_extra={"batch_index": [1]})["samples"]
    torch.testing.assert_close(pair[1:], second, atol=1e-5, rtol=1e-5)
    sde = [_sample(pack, model, positive, negative, seed=1, sampler="cps_sde", eta=1.0)["samples"] for _ in range(2)]
    assert torch.equal(sde[0], sde[1]) and not torch.allclose(sde[0], a["samples"])


def test_think_tokens_node_clones_and_changes_conditioning(pack, loaded):
    model, _ = loaded
    node = pack.nodes.conditioning.DeepGenThinkTokens
    off = node.execute(model=model, mode="off", count=0).args[0]
    four = node.execute(model=model, mode="first_n", count=4).args[0]
    assert model.num_think_tokens is None and off.num_think_tokens == 0 and four.num_think_tokens == 4
    full = _encode(pack, model)[0][0][0]
    assert _encode(pack, off)[0][0][0].shape[1] == full.shape[1] - 16
    assert _encode(pack, four)[0][0][0].shape[1] == full.shape[1] - 12
    with pytest.raises(ValueError, match="exceeds the 16 think tokens"):
        node.execute(model=model, mode="first_n", count=17)


def _compiled_blocks(model) -> int:
    return sum(b._compiled_call_impl is not None for b in model.transformer.model.inner.transformer_blocks)


def test_torch_compile_node_compiles_only_its_copy(pack, loaded):
    """The copy samples through compiled DiT blocks (AOT-eager here: dynamo's graph capture without code generation),
    equal to the plain model; the input model keeps sampling eagerly; switching back and forth compiles nothing more."""
    from torch._dynamo.utils import counters

    model, _ = loaded
    compiled = pack.nodes.acceleration.DeepGenTorchCompile.execute(model=model, backend="aot_eager", dynamic=True).args[0]
    assert model.compile is None and dict(compiled.compile) == {"backend": "aot_eager", "dynamic": True}
    positive, negative = _encode(pack, model)
    plain = _sample(pack, model, positive, negative)["samples"]
    assert _compiled_blocks(model) == 0
    graphs = counters["stats"]["unique_graphs"]
    out = _sample(pack, compiled, positive, negative)["samples"]
    blocks = len(model.transformer.model.inner.transformer_blocks)
    assert _compiled_blocks(model) == blocks
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo really traced the blocks
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    assert _sample(pack, model, positive, negative)["samples"].equal(plain) and _compiled_blocks(model) == 0
    wide = _sample(pack, compiled, positive, negative, size=(96, 64), batch=2)["samples"]
    assert _compiled_blocks(model) == blocks and wide.shape == (2, 16, 8, 12)
    assert counters["stats"]["unique_graphs"] == graphs  # the stashed compile, dynamic over size and batch
    assert _sample(pack, model, positive, negative)["samples"].equal(plain) and _compiled_blocks(model) == 0
    assert "backend 'cudagraphs' is not available" in pack.nodes.acceleration.DeepGenTorchCompile.validate_inputs(backend="cudagraphs")


def test_a_failing_compile_is_a_clear_error_and_the_plain_model_still_samples(pack, loaded):
    model, _ = loaded

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    broken = model.with_compile({"backend": broken_backend, "dynamic": True})
    positive, negative = _encode(pack, model)
    with pytest.raises(ValueError, match=r"torch.compile of the DiT failed .*no C\+\+ compiler found.*Remove the DeepGen Torch Compile node"):
        _sample(pack, broken, positive, negative)
    assert _sample(pack, model, positive, negative)["samples"].isfinite().all() and _compiled_blocks(model) == 0


def test_torch_compile_is_skipped_while_the_dit_is_partially_loaded(pack, loaded, monkeypatch, caplog):
    """Low VRAM casts weights per call (ComfyUI's comfy.ops): the compiled copy then samples eagerly, with a warning."""
    model, _ = loaded
    compiled = pack.nodes.acceleration.DeepGenTorchCompile.execute(model=model, backend="aot_eager", dynamic=True).args[0]
    positive, negative = _encode(pack, model)
    plain = _sample(pack, model, positive, negative)["samples"]
    mm = pack.nodes.model.model_management
    load = mm.load_models_gpu

    def load_partially(patchers, *args, **kwargs):
        load(patchers, *args, **kwargs)
        for p in patchers:
            p.model.model_lowvram = True

    monkeypatch.setattr(mm, "load_models_gpu", load_partially)
    try:
        with caplog.at_level("WARNING"):
            out = _sample(pack, compiled, positive, negative)["samples"]
        assert _compiled_blocks(model) == 0 and "partially loaded" in caplog.text
        assert out.equal(plain)
    finally:
        model.transformer.model.model_lowvram = False


def test_loader_folder_layout_equals_file_layout(pack, loaded):
    model, _ = loaded
    folder_model, _ = pack.nodes.loading.DeepGenLoader.execute(model_name="tiny-folder/", transformer_name="(from model)", vae_name="(from model)", dtype="fp32").args
    p, n = _encode(pack, model)
    fp, fn = _encode(pack, folder_model)
    assert torch.equal(p[0][0], fp[0][0])
    assert torch.equal(_sample(pack, model, p, n)["samples"], _sample(pack, folder_model, fp, fn)["samples"])


@pytest.fixture(scope="module")
def embedded_standin(tmp_path_factory) -> Path:
    """A stand-in for the shipped DeepGen-Tiny: its real layout and fp16 files, random weights."""
    folder = tmp_path_factory.mktemp("deepgen-tiny")
    save_converted(deepgen_tiny_architecture(seed=0), folder, dtype=torch.float16)
    return folder


def test_loader_offers_the_embedded_model_first_only_when_it_ships(pack, model_files, embedded_standin, monkeypatch, tmp_path):
    loading = pack.nodes.loading

    def options() -> list[str]:
        return {i.id: i for i in loading.DeepGenLoader.define_schema().inputs}["model_name"].options

    monkeypatch.setattr(loading, "DEEPGEN_TINY_DIR", embedded_standin)
    assert options()[0] == loading.EMBEDDED and "tiny-encoder.safetensors" in options()
    monkeypatch.setattr(loading, "DEEPGEN_TINY_DIR", tmp_path / "not-installed")
    assert loading.EMBEDDED not in options() and "tiny-encoder.safetensors" in options()


def test_embedded_model_with_its_own_dit_and_vae_matches_the_pipeline(pack, embedded_standin, monkeypatch):
    loading = pack.nodes.loading
    monkeypatch.setattr(loading, "DEEPGEN_TINY_DIR", embedded_standin)
    model, vae = loading.DeepGenLoader.execute(model_name=loading.EMBEDDED, transformer_name=loading.FROM_MODEL, vae_name=loading.FROM_MODEL, dtype="fp32").args
    assert vae.latent_channels == 16
    prompt = "a large red circle in the center, blue background"
    positive, negative = _encode(pack, model, prompt=prompt)
    out = _sample(pack, model, positive, negative)
    _assert_equals_pipeline(DeepGenPipeline.from_pretrained(embedded_standin, torch_dtype=torch.float32), prompt, out, vae)


# ------------------------------------------------------------------------------------------------ errors


def test_vlm_encode_default_edit_negative_comes_from_the_model_config(pack, loaded, monkeypatch):
    """With references and an empty negative, the node uses the model config's `default_edit_negative`."""
    import dataclasses

    model, _ = loaded
    pipeline_class, seen = pack.deepgen_core.pipeline.DeepGenPipeline, []
    original = pipeline_class.encode_prompt

    def encode_prompt(self, prompts, negative_prompts, *args, **kwargs):
        seen.append(list(negative_prompts))
        return original(self, prompts, negative_prompts, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "encode_prompt", encode_prompt)
    encoder, image = model.encoder.model.inner, torch.rand(1, 32, 32, 3)
    for edit_negative in (None, "", "washed out"):
        monkeypatch.setattr(encoder, "config", dataclasses.replace(encoder.config, edit_negative_prompt=edit_negative))
        _encode(pack, model, prompt="make it blue", image_1=image)
    _encode(pack, model, prompt="make it blue", negative="a red square", image_1=image)
    _encode(pack, model, prompt="make it blue", image_1=image, default_edit_negative=False)
    _encode(pack, model)  # text-to-image
    long = pack.deepgen_core.config.DEFAULT_EDIT_NEGATIVE_PROMPT
    assert seen == [[long], [""], ["washed out"], ["a red square"], [""], [""]]


def test_bad_inputs_give_clear_errors(pack, loaded, comfy):
    model, vae = loaded
    positive, negative = _encode(pack, model)
    sampler = pack.nodes.sampling.DeepGenSampler
    with pytest.raises(ValueError, match="multiples of 16"):
        sampler.execute(model=model, positive=positive, negative=negative, latent_image={"samples": torch.zeros(1, 16, 9, 8)}, seed=0, steps=2, cfg=4.0, shift=3.0)
    with pytest.raises(ValueError, match="EmptySD3LatentImage"):
        sampler.execute(model=model, positive=positive, negative=negative, latent_image={"samples": torch.zeros(1, 4, 8, 8)}, seed=0, steps=2, cfg=4.0, shift=3.0)
    with pytest.raises(ValueError, match="DeepGen VLM Encode"):
        sampler.execute(model=model, positive=[[positive[0][0], {}]], negative=negative, latent_image={"samples": torch.zeros(1, 16, 8, 8)}, seed=0, steps=2, cfg=4.0, shift=3.0)
    with pytest.raises(ValueError, match="empty batch"):
        pack.nodes.conditioning.DeepGenReferenceLatent.execute(conditioning=positive, image=torch.zeros(0, 64, 64, 3), vae=vae)
    wrong = type("SD15VAE", (), {"latent_channels": 4})()
    with pytest.raises(ValueError, match="16 channels"):
        pack.nodes.conditioning.DeepGenReferenceLatent.execute(conditioning=positive, image=torch.rand(1, 64, 64, 3), vae=wrong)
    with pytest.raises(ValueError, match="not in any models/deepgen folder"):
        pack.nodes.loading.DeepGenLoader.execute(model_name="missing.safetensors", transformer_name="(from model)", vae_name="(from model)")
    with pytest.raises(ValueError, match="pick the DiT file"):
        pack.nodes.loading.DeepGenLoader.execute(model_name="tiny-encoder.safetensors", transformer_name="(from model)", vae_name="tiny-vae.safetensors")


def test_cancel_during_sampling_stops_within_a_step_and_the_model_still_works(pack, loaded, comfy):
    model, _ = loaded
    positive, negative = _encode(pack, model)
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 2:
            comfy.mm.interrupt_current_processing(True)

    import comfy.utils as comfy_utils

    previous = comfy_utils.PROGRESS_BAR_HOOK
    comfy_utils.PROGRESS_BAR_HOOK = hook
    try:
        with pytest.raises(comfy.mm.InterruptProcessingException):
            _sample(pack, model, positive, negative, steps=10)
    finally:
        comfy_utils.PROGRESS_BAR_HOOK = previous
        comfy.mm.interrupt_current_processing(False)
    assert seen == [1, 2]
    assert _sample(pack, model, positive, negative)["samples"].isfinite().all()



def test_cancel_before_encoding_raises_and_the_next_encode_works(pack, loaded, comfy):
    model, _ = loaded
    comfy.mm.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.mm.InterruptProcessingException):
            _encode(pack, model)
    finally:
        comfy.mm.interrupt_current_processing(False)
    assert _encode(pack, model)[0][0][0].isfinite().all()

# ------------------------------------------------------------------------------------------------ OCR


def _text_image(text: str) -> torch.Tensor:
    image = Image.new("RGB", (320, 96), "white")
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", 48) if Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf").exists() else ImageFont.load_default(size=48)
    ImageDraw.Draw(image).text((16, 20), text, fill="black", font=font)
    return torch.from_numpy(__import__("numpy").asarray(image).copy()).float()[None] / 255


def test_ocr_reward_node_scores_rendered_text(pack):
    images = torch.cat([_text_image("HELLO"), torch.ones(1, 96, 320, 3)])
    scores, report = pack.nodes.rewards.DeepGenOCRReward.execute(images=images, target_text='a sign that says "HELLO"').args
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.5
    assert "'HELLO'" in report and report.count("image ") == 2
    unscored, _ = pack.nodes.rewards.DeepGenOCRReward.execute(images=images[:1], target_text="").args
    assert unscored == [-1.0]


@pytest.mark.skipif(not REAL_COMFY, reason="partial loading is ComfyUI's own ModelPatcher code (set COMFYUI_DIR)")
def test_partial_load_streams_weights_and_keeps_outputs(pack, loaded, comfy):
    """What --lowvram/--novram do: the patcher loads with a tiny weight budget, so every comfy.ops layer casts its
    weights per call and our ON_LOAD callback places the tensors it cannot stream. Outputs must not change."""
    model, _ = loaded
    positive, negative = _encode(pack, model)
    full = _sample(pack, model, positive, negative)
    patcher = model.transformer
    comfy.mm.unload_all_models()
    patcher.patch_model(device_to=patcher.load_device, lowvram_model_memory=1, load_weights=True)
    try:
        assert patcher.model.model_lowvram
        streamed = [m for m in patcher.model.modules() if getattr(m, "comfy_cast_weights", False)]
        assert len(streamed) >= 20  # every Linear / Conv2d / LayerNorm of the DiT
        # the adaLN Linears too (a third of the DiT), with their precomputed-row behaviour kept
        mixin = pack.deepgen_core.models.transformer.ModulationMixin
        assert sum(isinstance(m, mixin) for m in streamed) == 2 * len(patcher.model.inner.transformer_blocks) + 1
        pipe = DeepGenPipeline(model.tokenizer, model.encoder.model.inner, patcher.model.inner, None, model.scheduler)
        dtype = pipe.dtype
        embeds = pack.deepgen_core.pipeline.PromptEmbeddings(positive[0][0].to(dtype), positive[0][1]["pooled_output"].to(dtype), negative[0][0].to(dtype), negative[0][1]["pooled_output"].to(dtype))
        noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(7))
        latents = pipe.denoise(noise, embeds, None, 3, 4.0, 3.0)
        torch.testing.assert_close(to_vae_space(latents), full["samples"], atol=1e-5, rtol=1e-5)
    finally:
        patcher.unpatch_model(patcher.offload_device)


# ------------------------------------------------------------------------------------------------ RL preview


def test_rollout_preview_node_equals_the_trainer_functions(pack, loaded, model_files):
    from deepgen_core.rewards import BrightnessReward
    from deepgen_core.train.rl.preview import rollout_preview

    model, vae = loaded
    node = pack.nodes.rl.DeepGenRolloutPreview
    out = node.execute(model=model, vae=vae, prompts="a red circle\na blue square", group_size=3, seed=5, sampler="cps_sde", eta=1.0,
                       steps=2, cfg=1.0, width=32, height=32, rewards="brightness=1")
    images, report = out.args
    assert images.shape == (6, 32, 32, 3) and len(out.ui["images"]) == 1
    direct = rollout_preview(DeepGenPipeline.from_components(model_files), ["a red circle", "a blue square"], group_size=3, seed=5,
                             sampler="cps_sde", eta=1.0, steps=2, guidance_scale=1.0, height=32, width=32, rewards={"brightness": BrightnessReward()})
    parsed = [re.search(r"brightness ([\d.]+); total [\d.]+; advantage ([-+][\d.]+)", line).groups() for line in report.splitlines()]
    # through the stand-in, decoding is diffusers' own (same numbers); real ComfyUI decodes with its own VAE code
    tolerance = (2e-3, 5e-2) if REAL_COMFY else (1e-3, 1e-3)
    assert [float(b) for b, _ in parsed] == pytest.approx(direct.scores["brightness"], abs=tolerance[0])
    assert [float(a) for _, a in parsed] == pytest.approx(direct.advantages, abs=tolerance[1])
    with pytest.raises(ValueError, match="unknown reward 'sharpness'"):
        node.execute(model=model, vae=vae, prompts="x", group_size=2, seed=0, sampler="cps_sde", eta=1.0, steps=1, cfg=1.0, width=32, height=32, rewards="sharpness=1")


def test_loader_takes_the_tiny_vae_from_a_converted_folder(pack, comfy, model_files):
    from deepgen_core.models.tiny_vae import tiny_taesd_vae

    components = tiny_components(seed=0)
    components.vae = tiny_taesd_vae(0)  # the shipping width: ComfyUI's TAESD class builds 64-channel blocks
    folder = Path(comfy.folder_paths.get_folder_paths("deepgen")[-1]) / "tiny-taesd-folder"
    DeepGenPipeline.from_components(components).save_converted(folder, dtype=None)
    model, vae = pack.nodes.loading.DeepGenLoader.execute(model_name="tiny-taesd-folder/", transformer_name="(from model)", vae_name="(from model)", dtype="fp32").args
    assert vae.latent_channels == 16
    latents = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        ours = ((components.vae.decode(latents).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert (vae.decode(latents).float().cpu() - ours).abs().max() < 1e-4
    positive, negative = _encode(pack, model)
    samples = _sample(pack, model, positive, negative)["samples"]
    assert vae.decode(samples).shape == (1, 64, 64, 3)
