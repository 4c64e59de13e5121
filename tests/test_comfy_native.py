"""The native ComfyUI stack: DeepGen's DiT as MODEL, its VLM + SCB as CLIP.

The first part checks the pack's own logic (model config, conds, the DiT adaptor, LoRA key layout, CLIP encoding,
DiT file layouts) against the stand-in `tests/comfy_stub`, or a real ComfyUI when `COMFYUI_DIR` is set. The
second part needs a real ComfyUI (`COMFYUI_DIR`, `COMFY_PYTHON`): KSampler against DeepGen Sampler, other
samplers, fp8, a LoRA from `deepgen train sft`, partial loading, and both native templates on a headless server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepgen_core.errors import CheckpointError, DeepGenInputError
from deepgen_core.latents import to_model_space
from deepgen_core.native_dit import LORA_PREFIX, extract_dit_lora, read_dit
from deepgen_core.presets import DEEPGEN_TINY_DIR

REPO = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "comfy_stub"
REAL_COMFY = os.environ.get("COMFYUI_DIR")
EMBEDDED = "DeepGen-Tiny (embedded)"
PROMPT = "a large red circle in the center, blue background"


@pytest.fixture(scope="module")
def pack():
    if REAL_COMFY:
        sys.path.insert(0, REAL_COMFY)
        from comfy.cli_args import args

        args.cpu = True
    else:
        sys.path.insert(0, str(STUB))
    if "deepgen_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("deepgen_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["deepgen_pack"] = module
        spec.loader.exec_module(module)
    importlib.import_module("deepgen_pack.nodes")
    return sys.modules["deepgen_pack"]


@pytest.fixture(scope="module")
def native(pack):
    nodes = pack.nodes.native_nodes
    return nodes.DeepGenDiTLoader.execute(EMBEDDED).args[0], nodes.DeepGenCLIPLoader.execute(EMBEDDED).args[0]


@pytest.fixture(scope="module")
def one_box(pack):
    loading = pack.nodes.loading
    return loading.DeepGenLoader.execute(EMBEDDED, loading.FROM_MODEL, loading.FROM_MODEL, dtype="fp32").args


def _conds(model, seq, pooled, refs=None):
    out = model.model.extra_conds(cross_attn=seq, pooled_output=pooled, **({"reference_latents": refs} if refs else {}))
    return {k: v.cond for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ MODEL


def test_dit_loader_gives_a_flow_model_with_deepgen_shift_and_sd3_latents(pack, native):
    model, _ = native
    base = model.model
    assert isinstance(base, pack.nodes.native_model.DeepGenNativeModel)
    assert base.model_type.name == "FLOW" and (base.model_sampling.shift, base.model_sampling.multiplier) == (3.0, 1000)
    # SD3 latent format: (z - 0.0609) * 1.5305, the DiT's scaled space
    assert torch.allclose(base.process_latent_in(torch.ones(1, 16, 2, 2)), torch.full((1, 16, 2, 2), (1 - 0.0609) * 1.5305))
    assert base.get_dtype() == torch.float32 and base.manual_cast_dtype is None  # a CPU computes in fp32


def test_native_dit_gives_the_transformers_velocity_with_references(native, one_box):
    """apply_model's denoised output is x - sigma * v with v the DeepGen transformer's own velocity; the reference
    latent arrives in VAE space and is moved to the DiT's space by extra_conds."""
    model, _ = native
    dit = one_box[0].transformer.model.inner
    gen = torch.Generator().manual_seed(0)
    x, ref = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(1, 16, 8, 6, generator=gen)
    seq, pooled = torch.randn(2, 5, dit.config.joint_attention_dim, generator=gen), torch.randn(2, dit.config.pooled_projection_dim, generator=gen)
    sigma = torch.tensor([0.8, 0.3])
    with torch.no_grad():
        denoised = model.model.apply_model(x, sigma, **_conds(model, seq, pooled, [ref]))
        refs = [[to_model_space(ref)[0]]] * 2
        velocity = dit(x, seq, pooled, sigma * 1000, reference_latents=refs).sample
    torch.testing.assert_close(denoised, x - sigma[:, None, None, None] * velocity, rtol=1e-5, atol=1e-5)


def test_conds_that_are_not_deepgens_fail_with_the_fix(pack, native):
    model, _ = native
    DeepGenInputError = pack.deepgen_core.errors.DeepGenInputError  # the pack's own copy of the class  # noqa: N806
    config = model.model.model_config.unet_config["config"]
    seq, pooled = torch.zeros(1, 4, config["joint_attention_dim"]), torch.zeros(1, config["pooled_projection_dim"])
    with pytest.raises(DeepGenInputError, match="none pooled_output.*DeepGen CLIP Loader"):
        model.model.extra_conds(cross_attn=seq)
    with pytest.raises(DeepGenInputError, match="2048-wide one"):
        model.model.extra_conds(cross_attn=seq, pooled_output=torch.zeros(1, 2048))
    with pytest.raises(DeepGenInputError, match="4096 wide"):
        model.model.extra_conds(cross_attn=torch.zeros(1, 4, 4096), pooled_output=pooled)
    limit = config["pos_embed_max_size"] * config["patch_size"]
    with pytest.raises(DeepGenInputError, match=f"covers at most {limit * 8} px"):
        model.model.apply_model(torch.zeros(1, 16, limit + 2, 8), torch.tensor([1.0]), **_conds(model, seq, pooled))


def test_fp8_weight_dtype_stores_linear_weights_in_fp8_and_casts_per_call(pack, native):
    model = pack.nodes.native_nodes.DeepGenDiTLoader.execute(EMBEDDED, "fp8_e4m3fn").args[0]
    dit = model.model.diffusion_model
    assert dit.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn and dit.transformer_blocks[0].attn.to_q.comfy_cast_weights
    assert dit.transformer_blocks[0].attn.norm_q.weight.dtype == torch.float32  # norms stay in the compute dtype
    assert model.model.manual_cast_dtype == torch.float32
    config = model.model.model_config.unet_config["config"]
    conds = _conds(model, torch.randn(1, 4, config["joint_attention_dim"]), torch.randn(1, config["pooled_projection_dim"]))
    full = native[0].model.apply_model(torch.ones(1, 16, 8, 8), torch.tensor([0.5]), **conds)
    lossy = model.model.apply_model(torch.ones(1, 16, 8, 8), torch.tensor([0.5]), **conds)
    assert torch.isfinite(lossy).all() and 0 < (lossy - full).abs().max() < 0.5 * full.abs().max()


def test_loader_rejects_an_unknown_weight_dtype(pack):
    with pytest.raises(pack.deepgen_core.errors.DeepGenInputError, match="weight_dtype 'fp4'"):
        pack.nodes.native_model.native_model(read_dit(DEEPGEN_TINY_DIR), "fp4")


# ------------------------------------------------------------------------------------------------ LoRA


def _comfy_lora_key_map(model) -> dict[str, str]:
    """The generic part of ComfyUI's `comfy.lora.model_lora_keys_unet`: every `diffusion_model.<name>.weight` of the
    model is reachable as `diffusion_model.<name>`, other tensors by their full key."""
    keys = [k for k in model.model.state_dict() if k.startswith("diffusion_model.")]
    return {k.removesuffix(".weight"): k for k in keys}


def test_extracted_lora_uses_keys_comfys_loader_maps_and_rebuilds_the_fine_tune(native):
    base = read_dit(DEEPGEN_TINY_DIR).state
    gen = torch.Generator().manual_seed(0)
    tuned = {k: v.float() + 0.01 * torch.randn(v.shape, generator=gen) if ("attn.to_q" in k or "norm_out" in k) else v.float() for k, v in base.items()}
    lora = extract_dit_lora({k: v.float() for k, v in base.items()}, tuned, rank=512, dtype=torch.float32)
    key_map = _comfy_lora_key_map(native[0])
    names = {k.rsplit(".", 2)[0] if ".lora_" in k else k.rsplit(".", 1)[0] for k in lora}
    assert names and names <= set(key_map), sorted(names - set(key_map))[:5]
    assert all(k.startswith(LORA_PREFIX) for k in lora)
    name = f"{LORA_PREFIX}transformer_blocks.0.attn.to_q"
    up, down, alpha = lora[f"{name}.lora_B.weight"], lora[f"{name}.lora_A.weight"], lora[f"{name}.alpha"]
    rebuilt = base["transformer_blocks.0.attn.to_q.weight"].float() + (alpha / down.shape[0]) * up @ down  # ComfyUI: W + alpha/r B A
    torch.testing.assert_close(rebuilt, tuned["transformer_blocks.0.attn.to_q.weight"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lora[f"{name}.diff_b"], tuned["transformer_blocks.0.attn.to_q.bias"] - base["transformer_blocks.0.attn.to_q.bias"].float())
    assert not any("to_k" in k for k in lora)  # unchanged tensors are left out
    low = extract_dit_lora(base, tuned, rank=2, dtype=torch.float32)
    assert low[f"{name}.lora_A.weight"].shape[0] == 2


def test_extract_dit_lora_command_writes_the_difference(tmp_path):
    from safetensors.torch import load_file, save_file

    from deepgen_core.checkpoint import safetensors_metadata
    from deepgen_core.cli import main as deepgen

    source = DEEPGEN_TINY_DIR / "deepgen-transformer.safetensors"
    state = load_file(str(source))
    state["proj_out.weight"] = state["proj_out.weight"] + 0.05
    save_file(state, str(tmp_path / "tuned.safetensors"), metadata=safetensors_metadata(source))
    out = tmp_path / "loras" / "dit.safetensors"
    assert deepgen(["extract-dit-lora", "--base", "tiny", "--tuned", str(tmp_path / "tuned.safetensors"), "--out", str(out), "--rank", "4"]) == 0
    lora = load_file(str(out))
    assert set(lora) == {f"{LORA_PREFIX}proj_out.{k}" for k in ("lora_A.weight", "lora_B.weight", "alpha")}
    assert lora[f"{LORA_PREFIX}proj_out.lora_A.weight"].dtype == torch.bfloat16 and safetensors_metadata(out)["component"] == "dit_lora"
    assert deepgen(["extract-dit-lora", "--base", "tiny", "--tuned", "tiny", "--out", str(out)]) == 2  # nothing changed: a clear error


def test_lora_extraction_rejects_different_models():
    with pytest.raises(DeepGenInputError, match="differ in keys or shapes"):
        extract_dit_lora({"a.weight": torch.zeros(2, 2)}, {"b.weight": torch.zeros(2, 2)})


# ------------------------------------------------------------------------------------------------ DiT layouts


def test_read_dit_finds_converted_and_diffusers_layouts(tmp_path, one_box):
    converted = read_dit(DEEPGEN_TINY_DIR)
    assert converted.shift == 3.0 and converted.config["num_layers"] == 8
    assert read_dit(DEEPGEN_TINY_DIR / "deepgen-transformer.safetensors").state.keys() == converted.state.keys()
    one_box[0].transformer.model.inner.save_pretrained(tmp_path / "release" / "transformer")
    (tmp_path / "release" / "scheduler").mkdir()
    (tmp_path / "release" / "scheduler" / "scheduler_config.json").write_text(json.dumps({"shift": 2.5}))
    for path in (tmp_path / "release", tmp_path / "release" / "transformer", tmp_path / "release" / "transformer" / "diffusion_pytorch_model.safetensors"):
        found = read_dit(path)
        assert found.shift == 2.5 and found.config["num_layers"] == 8 and found.state.keys() == converted.state.keys(), path
    (tmp_path / "loose.safetensors").write_bytes((tmp_path / "release" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="carries no DiT config"):
        read_dit(tmp_path / "loose.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_dit(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------------ CLIP


def test_clip_text_encode_gives_the_pipelines_conditioning_with_the_marker(native, one_box):
    _, clip = native
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    assert len(conditioning) == 1 and conditioning[0][1]["deepgen"] is True
    pipe = one_box[0].pipeline(one_box[0].encoder)
    expected = pipe.encode_prompt([PROMPT], [])
    torch.testing.assert_close(conditioning[0][0], expected.prompt_embeds)
    torch.testing.assert_close(conditioning[0][1]["pooled_output"], expected.pooled_prompt_embeds)


def test_edit_encode_sends_images_to_the_vlm_and_optionally_appends_reference_latents(pack, native, one_box):
    _, clip = native
    node = pack.nodes.native_nodes.DeepGenTextEncodeEdit
    with pytest.raises(pack.deepgen_core.errors.DeepGenInputError, match="got no image"):
        node.execute(clip, "make the circle green")
    image = torch.rand(1, 64, 96, 3)
    plain = node.execute(clip, "make the circle green", image_1=image).args[0]
    assert "reference_latents" not in plain[0][1]
    text_only = clip.encode_from_tokens_scheduled(clip.tokenize("make the circle green"))
    assert plain[0][0].shape[1] > text_only[0][0].shape[1] or not torch.equal(plain[0][1]["pooled_output"], text_only[0][1]["pooled_output"])
    with_refs = node.execute(clip, "make the circle green", image_1=image, vae=one_box[1]).args[0]
    (latent,) = with_refs[0][1]["reference_latents"]
    assert latent.shape == (1, 16, 8, 12) and torch.equal(with_refs[0][0], plain[0][0])


def test_native_encoders_check_prompts_and_sizes_before_the_vlm_runs(pack, native, monkeypatch):
    """The checks DeepGen VLM Encode makes (control tokens, the 1,024-token limit, the resize settings) happen at
    tokenize time, named by the node's own input, before the encoder is loaded or run."""
    _, clip = native
    node = pack.nodes.native_nodes.DeepGenTextEncodeEdit
    assert clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))[0][1][pack.nodes.conditioning.DEEPGEN_MARKER] is True
    monkeypatch.setattr(type(clip.cond_stage_model), "encode_token_weights", lambda *a: (_ for _ in ()).throw(AssertionError("the VLM ran")))
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match="^text has .* tokens; DeepGen reads at most 1024"):
        clip.tokenize("a red circle " * 2000)  # CLIPTextEncode's widget is `text`
    with pytest.raises(ValueError, match=r"^prompt contains the model's control token\(s\) \['<\|image_pad\|>'\]"):
        node.execute(clip, "make it <|image_pad|> green", image_1=image)
    with pytest.raises(ValueError, match="^prompt has .* tokens"):
        node.execute(clip, "make the circle green " * 2000, image_1=image)
    with pytest.raises(ValueError, match=r"^reference_size must be an integer >= 32 and <= 8192, got 0; the nearest valid value is 32"):
        node.execute(clip, "make the circle green", image_1=image, reference_size=0)
    with pytest.raises(ValueError, match="^reference_resize 'crop' is not a resize policy"):
        node.execute(clip, "make the circle green", image_1=image, reference_resize="crop")


def test_native_combos_are_checked_when_queued_and_when_run(pack):
    """ComfyUI does not check V3 combo values: the native nodes' validate_inputs do (and execute, for API callers)."""
    nodes = pack.nodes.native_nodes
    assert nodes.DeepGenDiTLoader.validate_inputs(weight_dtype="fp8_e4m3fn") is True
    assert nodes.DeepGenDiTLoader.validate_inputs(weight_dtype="fp4") == "weight_dtype 'fp4' is not available; choose one of ['default', 'bf16', 'fp8_e4m3fn', 'fp8_e4m3fn_fast']."
    assert nodes.DeepGenCLIPLoader.validate_inputs() is True and "dtype 'fp16' is not available" in nodes.DeepGenCLIPLoader.validate_inputs(dtype="fp16")
    assert nodes.DeepGenTextEncodeEdit.validate_inputs(reference_resize="crop").startswith("reference_resize 'crop' is not available")
    with pytest.raises(ValueError, match="^dtype 'fp16' is not available; choose one of"):
        nodes.DeepGenCLIPLoader.execute(EMBEDDED, "fp16")
    with pytest.raises(ValueError, match="^weight_dtype 'fp4' is not available; choose one of"):
        nodes.DeepGenDiTLoader.execute(EMBEDDED, "fp4")


def test_edit_encode_names_a_clip_that_is_not_deepgens(pack):
    stock = type("CLIP", (), {"tokenizer": type("SD1Tokenizer", (), {})()})()
    with pytest.raises(ValueError, match=r"clip is not DeepGen's CLIP \(its tokenizer is a SD1Tokenizer\); load it with DeepGen CLIP Loader"):
        pack.nodes.native_nodes.DeepGenTextEncodeEdit.execute(stock, "make the circle green", image_1=torch.rand(1, 64, 64, 3))


# ------------------------------------------------------------------------------------------------ real ComfyUI

real = pytest.mark.skipif(not REAL_COMFY, reason="set COMFYUI_DIR (and COMFY_PYTHON) to a real ComfyUI")
RUNNER = REPO.parent / "shared" / "tools" / "comfy" / "run_workflow.py"


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory):
    """A 2-step `deepgen train sft` run from the embedded DeepGen-Tiny, and its DiT change as a LoRA file."""
    sys.path.insert(0, str(Path(__file__).parent))
    from train_helpers import reset_accelerate, tiny_config, tiny_data

    from deepgen_core.cli import main as deepgen
    from deepgen_core.train.trainer import Trainer

    root = tmp_path_factory.mktemp("sft")
    reset_accelerate()
    config = tiny_config("sft", tiny_data(root / "data"), root / "run", **{"max_steps": 2, "checkpoint.save_every": 100, "model.source": f"'{DEEPGEN_TINY_DIR}'"})
    export = Trainer(config).run().export_dir
    lora = root / "loras" / "deepgen_sft.safetensors"
    assert deepgen(["extract-dit-lora", "--base", "tiny", "--tuned", str(export), "--out", str(lora), "--rank", "128", "--dtype", "float32"]) == 0
    return export, lora


@real
def test_native_model_and_clip_in_real_comfyui(sft_lora, tmp_path):
    export, lora = sft_lora
    python = os.environ.get("COMFY_PYTHON", sys.executable)
    out = tmp_path / "results.json"
    cmd = [python, str(REPO / "tests" / "comfy_native_check.py"), "--comfy", REAL_COMFY, "--tuned-dit", str(export), "--lora", str(lora), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    # KSampler euler + normal is DeepGen Sampler's schedule (diffusers' sigmas, shift 3): same latents in fp32
    assert r["t2i_euler_normal"] < 1e-4 and r["edit_euler_normal"] < 1e-4 and r["t2i_shift3_node"] < 1e-4, r
    assert r["t2i_batch2"] < 1e-4 and r["edit_two_references"] < 1e-4, r
    # simple spaces the sigmas 1/N apart instead of (1 - sigma_min)/(N - 1): close, not equal
    assert 1e-4 < r["t2i_euler_simple"] < 0.1 and r["t2i_shift6_node"] > 1e-3, r
    assert all(v is True for k, v in r.items() if k.startswith("finite_")), r
    assert r["sweep_runs"] > 40 and r["sweep_failures"] == {}, r  # every KSampler sampler and scheduler
    assert r["edit_changes_image"] > 0.1 and r["clip_marker"] is True, r
    assert r["clip_into_one_box_vs_native"] < 1e-4 and r["clip_edit_native_vs_one_box"] < 1e-4, r
    assert r["dtype_bf16_storage"] == "torch.bfloat16" and r["dtype_fp8_e4m3fn_storage"] == "torch.float8_e4m3fn", r
    assert r["dtype_bf16"] < 0.05 and r["dtype_fp8_e4m3fn"] < 0.5 and r["dtype_fp8_e4m3fn_fast"] < 0.5, r
    # the SFT fine-tune as a LoRA through LoraLoaderModelOnly = the fine-tuned DiT itself; the base stays untouched
    assert r["lora_patches"] > 0 and r["lora_vs_merged"] < 1e-3 and r["tuned_vs_base"] > 0.01 and r["base_after_lora"] < 1e-4, r
    assert r["lowvram_streamed_layers"] > 0 and r["lowvram_vs_full"] < 1e-5 and r["after_unload"] < 1e-4, r


@real
@pytest.mark.slow
def test_torch_compile_model_compiles_the_native_dit(tmp_path):
    python = os.environ.get("COMFY_PYTHON", sys.executable)
    out = tmp_path / "compile.json"
    cmd = [python, str(REPO / "tests" / "comfy_native_check.py"), "--comfy", REAL_COMFY, "--compile-only", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(out.read_text())["compiled_vs_eager"] < 1e-4


@real
def test_native_templates_draw_what_they_say_in_a_real_server(tmp_path):
    from deepgen_core.tiny_world import detect

    python = os.environ.get("COMFY_PYTHON", sys.executable)
    workflows = [REPO / "workflows" / "api" / f"{name}.json" for name in ("deepgen_native_text_to_image", "deepgen_native_edit")]
    cmd = [sys.executable, str(RUNNER), *map(str, workflows), "--comfy-dir", REAL_COMFY, "--python", python, "--custom-nodes", str(REPO),
           "--require-nodes", "DeepGenDiTLoader,DeepGenCLIPLoader,DeepGenVAELoader,DeepGenTextEncodeEdit", "--fetch-images", str(tmp_path / "images"),
           "--json-out", str(tmp_path / "summary.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    found = {}
    for prefix in ("deepgen_native_t2i", "deepgen_native_edit_source", "deepgen_native_edit"):
        image = Image.open(min((tmp_path / "images").rglob(f"*_{prefix}_0*.png")))
        detection = detect(image)
        assert image.size == (128, 128) and detection.background == "blue" and len(detection.objects) == 1, (prefix, detection)
        found[prefix] = (detection.objects[0].obj.colour, detection.objects[0].obj.shape)
    assert found == {"deepgen_native_t2i": ("red", "circle"), "deepgen_native_edit_source": ("red", "circle"), "deepgen_native_edit": ("green", "circle")}
