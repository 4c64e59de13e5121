"""Numerical parity with the reference implementation's recorded outputs (shared/fixtures/reference-tiny)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import assert_parity
from deepgen_core.checkpoint import reference_bridge_key
from deepgen_core.image_processing import pil_to_tensor, vit_patches
from deepgen_core.prompts import edit_prompt, text_to_image_prompt
from deepgen_core.train.objectives import FlowMatchingTargets, flow_matching_loss, predict_velocity, training_schedule

GENERATE_CASES = ["t2i_generate", "edit_generate", "edit2ref_generate"]


def _capture_stacked(pipe):
    captured = {}
    handle = pipe.encoder.bridge.register_forward_hook(lambda m, args, out: captured.__setitem__("stacked", args[0]))
    return captured, handle


def _vae_latent(pipe, pixels, eps):
    # (mean + std * eps - shift) * scale with the reference's recorded posterior noise (README point 10)
    dist = pipe.vae.encode(pixels[None]).latent_dist
    cfg = pipe.vae.config
    return ((dist.mean + dist.std * eps - cfg.shift_factor) * cfg.scaling_factor)[0]


def _references(pipe, fixture_dir, inputs, g):
    images = [Image.open(fixture_dir / r["image"]) for r in inputs.get("refs", [[]])[0]]
    with torch.no_grad():
        latents = [_vae_latent(pipe, g[f"src{i}_pixels"], g[f"src{i}_vae_eps"]) for i in range(len(images))]
    return images, latents


def test_prompt_tokens_match(pipe, golden, manifest):
    g = golden("t2i_generate")
    inputs = manifest["outputs/t2i_generate.safetensors"]["inputs"]
    texts = [text_to_image_prompt(p) for p in inputs["prompts"]] + [text_to_image_prompt(inputs["cfg_prompt"])] * 2
    ids, mask = pipe._tokenize(texts)
    assert torch.equal(ids, g["input_ids"]) and torch.equal(mask, g["text_attention_mask"])


@pytest.mark.parametrize("case", ["edit_generate", "edit2ref_generate"])
def test_vit_patches_and_embeddings(pipe, golden, fixture_dir, manifest, case):
    g = golden(case)
    refs = manifest[f"outputs/{case}.safetensors"]["inputs"]["refs"][0]
    for i, ref in enumerate(refs):
        pixels = pil_to_tensor(Image.open(fixture_dir / ref["image"]).convert("RGB"))
        assert torch.equal(pixels, g[f"src{i}_pixels"])
        patches, grid = vit_patches(pixels)
        assert torch.equal(grid, g[f"src{i}_visual_grid_thw"])
        assert_parity(patches, g[f"src{i}_visual_patches"], "patches")
        assert_parity(pipe.encoder.encode_images(patches, grid), g[f"src{i}_image_embeds"], "image_embeds")
        dist = pipe.vae.encode(pixels[None]).latent_dist
        assert_parity(dist.mean, g[f"src{i}_vae_posterior_mean"], "posterior mean")
        assert_parity(dist.std, g[f"src{i}_vae_posterior_std"], "posterior std")


@pytest.mark.parametrize("case", GENERATE_CASES)
def test_full_generation(pipe, golden, fixture_dir, manifest, case):
    """SCB tensors, every DiT velocity, final latents, decoded image and uint8 output of a whole CFG run."""
    g = golden(case)
    inputs = manifest[f"outputs/{case}.safetensors"]["inputs"]
    images, ref_latents = _references(pipe, fixture_dir, inputs, g)
    if images:
        for i, lat in enumerate(ref_latents):
            assert_parity(lat, g[f"src{i}_cond_latents"][0], "reference latent")
    captured, handle = _capture_stacked(pipe)
    calls = []
    dit_hook = pipe.transformer.register_forward_hook(lambda m, a, out: calls.append(out.sample.detach().clone()))
    try:
        out = pipe(
            inputs["prompts"], image=[images] if images else None, negative_prompt=inputs["cfg_prompt"],
            height=inputs["height"], width=inputs["width"], num_inference_steps=inputs["num_steps"],
            guidance_scale=inputs["cfg_scale"], latents=g["initial_noise"],
            reference_latents=[ref_latents] if images else None, output_type="np",
        )
    finally:
        handle.remove(), dit_hook.remove()
    assert_parity(captured["stacked"], g["merged_hidden"], "merged_hidden")
    assert len(calls) == inputs["num_steps"]  # cond + uncond in one DiT batch per step
    assert_parity(torch.stack(calls), g["step_noise_pred_raw"], "step velocities")
    assert_parity(out.latents, g["final_latents"], "final_latents")
    assert_parity(pipe.decode_latents(out.latents), g["decoded_image"], "decoded_image")
    diff = (torch.from_numpy(out.images).int() - g["image_uint8"].int()).abs().max().item()
    assert diff <= 1, f"uint8 images differ by {diff} levels"


@pytest.mark.parametrize("case", GENERATE_CASES)
def test_scb_outputs(pipe, golden, manifest, fixture_dir, case):
    g = golden(case)
    inputs = manifest[f"outputs/{case}.safetensors"]["inputs"]
    images, _ = _references(pipe, fixture_dir, inputs, g)
    pixels = pipe.prepare_reference_pixels([images], 1, "dynamic", 512) if images else None
    captured, handle = _capture_stacked(pipe)
    connector_out = []
    h2 = pipe.encoder.bridge.connector.register_forward_hook(lambda m, a, out: connector_out.append(out.last_hidden_state))
    with torch.no_grad():
        emb = pipe.encode_prompt(inputs["prompts"], [inputs["cfg_prompt"]] * len(inputs["prompts"]), pixels)
    handle.remove(), h2.remove()
    assert_parity(captured["stacked"], g["merged_hidden"], "merged_hidden")
    assert_parity(connector_out[0], g["connector_out"], "connector_out")
    assert_parity(emb.prompt_embeds, g["prompt_embeds"], "prompt_embeds")
    assert_parity(emb.pooled_prompt_embeds, g["pooled_prompt_embeds"], "pooled")
    assert_parity(emb.negative_prompt_embeds, g["negative_prompt_embeds"], "negative_prompt_embeds")
    assert_parity(emb.negative_pooled_prompt_embeds, g["negative_pooled_prompt_embeds"], "negative pooled")


@pytest.mark.parametrize("case", ["c1", "c2", "c3"])
def test_dit_forward(pipe, golden, case):
    g = golden("dit_forward")
    if case == "c3":
        x = [g["c3_hidden_states_s0"], g["c3_hidden_states_s1"]]
        refs = [[g["c3_cond_s0_r0"], g["c3_cond_s0_r1"]], []]
        out = pipe.transformer(x, g["c3_encoder_hidden_states"], g["c3_pooled_projections"], g["c3_timestep"], reference_latents=refs).sample
        assert isinstance(out, list)
        assert_parity(out[0], g["c3_noise_pred_s0"], "c3 s0")
        assert_parity(out[1], g["c3_noise_pred_s1"], "c3 s1")
        return
    refs = [[g["c2_cond_s0_r0"]], [g["c2_cond_s1_r0"]]] if case == "c2" else None
    with torch.no_grad():
        out = pipe.transformer(g["c1_hidden_states"], g["c1_encoder_hidden_states"], g["c1_pooled_projections"], g["c1_timestep"], reference_latents=refs).sample
    assert_parity(out, g[f"{case}_noise_pred"], case)


@pytest.mark.parametrize("kind,key", [("text2image", "t2i"), ("image2image", "i2i")])
def test_training_loss_and_gradients(pipe, golden, manifest, fixture_dir, kind, key):
    g = golden("train_losses")
    info = manifest["outputs/train_losses.safetensors"]
    inputs, texts = info["inputs"][kind], info["info"][kind]["texts_effective"]
    load = lambda p: pil_to_tensor(Image.open(fixture_dir / p).convert("RGB"))  # noqa: E731
    with torch.no_grad():
        latents = [_vae_latent(pipe, load(p), g[f"e_{key}_tgt{i}_vae_eps"]) for i, p in enumerate(inputs["images"])]
    sources = refs = None
    if kind == "image2image":
        sources = [[load(s) for s in srcs] for srcs in inputs["srcs"]]
        with torch.no_grad():
            refs = [[_vae_latent(pipe, s[0], g[f"e_{key}_src{i}_vae_eps"])] for i, s in enumerate(sources)]
    pipe.encoder.zero_grad(set_to_none=True)
    emb = pipe.encode_prompt(texts, [], sources, max_text_length=1024)
    timesteps, sigmas = training_schedule(pipe.scheduler, g[f"e_{key}_u"], torch.float32)
    assert torch.equal(timesteps, g[f"e_{key}_timesteps"]) and torch.equal(sigmas, g[f"e_{key}_sigmas"])
    noise = [g[f"e_{key}_tgt{i}_noise"] for i in range(len(latents))]
    targets = FlowMatchingTargets(latents, noise, timesteps, sigmas)
    preds = predict_velocity(pipe.transformer, targets, emb.prompt_embeds, emb.pooled_prompt_embeds, refs)
    for i, p in enumerate(preds):
        assert_parity(p, g[f"e_{key}_tgt{i}_model_pred"], f"model_pred {i}")
    loss = flow_matching_loss(preds, latents, noise)
    torch.testing.assert_close(loss, g[f"e_{key}_loss"], rtol=1e-5, atol=0)
    loss.backward()
    params = dict(pipe.encoder.named_parameters())
    norms = torch.stack([params[reference_bridge_key(n)].grad.norm() for n in info["info"][kind]["grad_norm_param_names"]])
    torch.testing.assert_close(norms, g[f"e_{key}_grad_norms_per_param"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(params["think_tokens"].grad, g[f"e_{key}_grad_meta_queries"], rtol=1e-4, atol=1e-6)
    pipe.encoder.zero_grad(set_to_none=True)
    pipe.transformer.zero_grad(set_to_none=True)


def test_edit_prompt_template():
    text = edit_prompt("make it red", [2, 1])
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>"
                    "<|vision_start|><|image_pad|><|vision_end|>\nmake it red<|im_end|>\n<|im_start|>assistant\n")
    assert text_to_image_prompt("") == "<|im_start|>user\nGenerate an image: <|im_end|>\n<|im_start|>assistant\n"
