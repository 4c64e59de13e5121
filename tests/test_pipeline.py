"""Pipeline behaviour on the tiny preset: fast-path contracts, determinism, callbacks, outputs, CLI."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from deepgen_core.models.transformer import DeepGenJointAttnProcessor
from deepgen_core.prompts import edit_prompt, text_to_image_prompt


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def spy(monkeypatch, tiny_pipe):
    """Records the masks the DiT processors and the VLM text model receive, and how often each runs."""
    seen = {"dit_masks": [], "vlm_masks": [], "vlm_calls": 0, "dit_calls": 0}
    original = DeepGenJointAttnProcessor.__call__

    def proc(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        seen["dit_masks"].append(attention_mask)
        return original(self, attn, hidden_states, encoder_hidden_states, attention_mask)

    monkeypatch.setattr(DeepGenJointAttnProcessor, "__call__", proc)
    lm = tiny_pipe.encoder.vlm.language_model

    def pre_hook(module, args, kwargs):
        seen["vlm_calls"] += 1
        seen["vlm_masks"].append(kwargs.get("attention_mask"))

    h1 = lm.register_forward_pre_hook(pre_hook, with_kwargs=True)
    h2 = tiny_pipe.transformer.register_forward_hook(lambda *a: seen.__setitem__("dit_calls", seen["dit_calls"] + 1))
    yield seen
    h1.remove(), h2.remove()


def test_unpadded_runs_without_masks_and_batches_cfg(tiny_pipe, spy):
    # prompt and negative tokenise to the same length here, so nothing is padded anywhere
    tiny_pipe("a red circle", negative_prompt="a red square", num_inference_steps=3, height=64, width=64, generator=_gen(), output_type="latent")
    assert spy["vlm_calls"] == 1 and spy["vlm_masks"] == [None]
    assert spy["dit_calls"] == 3  # one DiT call per step: cond + uncond in one batch
    assert spy["dit_masks"] and all(m is None for m in spy["dit_masks"])


def test_padded_prompts_pass_a_mask_only_to_the_vlm(tiny_pipe, spy):
    tiny_pipe("a red circle on a blue background", negative_prompt="", num_inference_steps=2, height=64, width=64, generator=_gen(), output_type="latent")
    assert spy["vlm_calls"] == 1 and spy["vlm_masks"][0] is not None
    assert all(m is None for m in spy["dit_masks"])  # equal image streams: the DiT stays unmasked


def test_edit_single_vlm_pass_and_unmasked_dit(tiny_pipe, spy):
    ref = Image.new("RGB", (64, 96), (200, 30, 30))
    out = tiny_pipe("make it blue", image=ref, num_inference_steps=2, generator=_gen(), output_type="latent")
    assert out.latents.shape == (1, 16, 12, 8)  # output size follows the single reference (96 x 64)
    assert spy["vlm_calls"] == 1 and all(m is None for m in spy["dit_masks"])


def test_mixed_reference_sizes_mask_and_match_per_sample(tiny_pipe):
    """A batch whose samples have different reference sizes takes the padded path; each sample must equal
    what it gives alone (padding never leaks into real tokens)."""
    dit = tiny_pipe.transformer
    g = _gen(1)
    x = torch.randn(2, 16, 8, 8, generator=g)
    ctx, pooled, t = torch.randn(2, 7, 48, generator=g), torch.randn(2, 40, generator=g), torch.tensor([500.0, 300.0])
    refs = [[torch.randn(16, 8, 8, generator=g)], [torch.randn(16, 4, 6, generator=g), torch.randn(16, 6, 4, generator=g)]]
    with torch.no_grad():
        both = dit(x, ctx, pooled, t, reference_latents=refs).sample
        for i in range(2):
            alone = dit(x[i : i + 1], ctx[i : i + 1], pooled[i : i + 1], t[i : i + 1], reference_latents=[refs[i]]).sample
            torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_images", [False, True])
def test_position_ids_equal_qwen_rope_index(tiny_pipe, with_images):
    """The vectorised M-RoPE positions equal transformers' `get_rope_index` (pads: 1, as the reference): text only,
    and left-padded edit prompts with one or two references of different grids, think-token slots appended."""
    encoder, prompts = tiny_pipe.encoder, ["a red circle", "a very small blue square on a green background", ""]
    grids = None
    if with_images:
        refs = [[torch.zeros(3, 64, 64)], [torch.zeros(3, 64, 96), torch.zeros(3, 32, 64)], [torch.zeros(3, 96, 32)]]
        tokens = tiny_pipe.encode_reference_tokens(refs)
        prompts, grids = [edit_prompt(p, c) for p, c in zip(prompts, tokens.counts)], tokens.grids
    else:
        prompts = [text_to_image_prompt(p) for p in prompts]
    ids, mask = tiny_pipe._tokenize(prompts)
    mask = torch.cat([mask, torch.ones_like(mask[:, :4])], 1).bool()  # think-token slots
    ids = torch.cat([ids, ids.new_zeros(3, 4)], 1)
    types = (ids == encoder.image_token_id).int()
    expected, _ = encoder.vlm.get_rope_index(ids, types, image_grid_thw=grids, attention_mask=mask)
    got = encoder.position_ids(ids, mask, grids)
    assert (~mask).any() and bool(types.any()) == with_images
    assert torch.equal(got, expected.masked_fill(~mask[None], 1))


def test_memoised_tokenization_equals_the_tokenizer(tiny_pipe):
    """`_tokenize` (token ids remembered per text) gives the tokenizer's left-padded batch, on first and repeated
    texts, an empty one included, and an all-empty batch."""
    for texts in (["a red circle", "", "a red circle on a very blue background"], ["", "a red circle", "b"], ["", ""]):
        expected = tiny_pipe.tokenizer(texts, padding=True, return_tensors="pt", padding_side="left")
        ids, mask = tiny_pipe._tokenize(texts)
        assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])


def test_cached_reference_tokens_equal_reference_pixels(tiny_pipe):
    """`encode_prompt` on precomputed `ReferenceTokens` (the training cache) equals encoding the pixels."""
    g = _gen(2)
    refs = [[torch.rand(3, 64, 64, generator=g) * 2 - 1], [torch.rand(3, 64, 96, generator=g) * 2 - 1, torch.rand(3, 32, 64, generator=g) * 2 - 1]]
    with torch.no_grad():
        direct = tiny_pipe.encode_prompt(["make it red", "swap them"], ["", ""], refs)
        tokens = tiny_pipe.encode_reference_tokens(refs)
        cached = tiny_pipe.encode_prompt(["make it red", "swap them"], ["", ""], tokens)
    assert tokens.counts == [[4], [6, 2]] and tokens.grids.tolist() == [[1, 4, 4], [1, 4, 6], [1, 2, 4]]
    for a, b in zip(vars(direct).values(), vars(cached).values()):
        assert torch.equal(a, b)


def test_same_seed_same_image_and_seed_matters(tiny_pipe):
    kw = dict(num_inference_steps=3, height=64, width=64, output_type="np")
    a = tiny_pipe("a cat", generator=_gen(7), **kw).images
    b = tiny_pipe("a cat", generator=_gen(7), **kw).images
    c = tiny_pipe("a cat", generator=_gen(8), **kw).images
    assert (a == b).all() and not (a == c).all()


def test_seeded_reference_latents_are_reproducible_and_mode_is_deterministic(tiny_pipe):
    pixels = [[torch.rand(3, 64, 64) * 2 - 1]]
    s1 = tiny_pipe.encode_reference_latents(pixels, _gen(3))[0][0]
    s2 = tiny_pipe.encode_reference_latents(pixels, _gen(3))[0][0]
    m = tiny_pipe.encode_reference_latents(pixels, None, mode="mode")[0][0]
    assert torch.equal(s1, s2) and not torch.equal(s1, m)


def test_images_per_prompt_and_output_types(tiny_pipe):
    out = tiny_pipe(["a", "b"], num_images_per_prompt=2, num_inference_steps=1, height=32, width=48, generator=_gen(), output_type="pt")
    assert out.images.shape == (4, 3, 32, 48) and 0 <= out.images.min() and out.images.max() <= 1
    pil = tiny_pipe("a", num_inference_steps=1, height=32, width=48, generator=_gen(), output_type="pil").images
    assert len(pil) == 1 and pil[0].size == (48, 32)


def test_callback_progress_preview_and_cancel(tiny_pipe):
    steps = []

    def callback(pipe, i, t, tensors):
        steps.append((i, float(t), tuple(tensors)))
        assert tensors["denoised"].shape == tensors["latents"].shape
        if i == 1:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        tiny_pipe("a", num_inference_steps=5, height=32, width=32, generator=_gen(), callback_on_step_end=callback,
                  callback_on_step_end_tensor_inputs=("latents", "denoised"))
    assert [s[0] for s in steps] == [0, 1] and steps[0][1] == 1000.0


def test_callback_can_replace_latents(tiny_pipe):
    out = tiny_pipe("a", num_inference_steps=2, height=32, width=32, generator=_gen(), output_type="latent",
                    callback_on_step_end=lambda p, i, t, k: {"latents": torch.zeros_like(k["latents"])})
    assert torch.count_nonzero(out.latents) == 0


def test_cli_generate_embedded_model(tmp_path, monkeypatch):
    import deepgen_core.presets
    from deepgen_core.cli import main
    from deepgen_core.pipeline import DeepGenPipeline
    from deepgen_core.presets import tiny_components

    # the CLI path without --model, on a stand-in for the shipped weights (the trained ones: test_deepgen_tiny.py)
    DeepGenPipeline.from_components(tiny_components(seed=0)).save_converted(tmp_path / "embedded", dtype=None)
    monkeypatch.setattr(deepgen_core.presets, "DEEPGEN_TINY_DIR", tmp_path / "embedded")
    out = tmp_path / "x.png"
    assert main(["generate", "--prompt", "a red circle on a blue background", "--steps", "2", "--height", "64", "--width", "64", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.size == (64, 64) and img.mode == "RGB"


def test_cli_speed_switches_reach_the_pipeline(tmp_path, monkeypatch):
    import numpy as np

    import deepgen_core.presets
    from deepgen_core import acceleration
    from deepgen_core.cli import main
    from deepgen_core.pipeline import DeepGenPipeline
    from deepgen_core.presets import tiny_components

    DeepGenPipeline.from_components(tiny_components(seed=0)).save_converted(tmp_path / "embedded", dtype=None)
    monkeypatch.setattr(deepgen_core.presets, "DEEPGEN_TINY_DIR", tmp_path / "embedded")
    base = ["generate", "--prompt", "a red circle", "--steps", "2", "--height", "64", "--width", "64"]
    assert main([*base, "--out", str(tmp_path / "plain.png")]) == 0
    assert main([*base, "--offload", "model", "--vae-tiling", "--out", str(tmp_path / "offload.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(tmp_path / "offload.png")))
    seen, saved = {}, []
    original = DeepGenPipeline.enable_fast_path
    monkeypatch.setattr(DeepGenPipeline, "enable_fast_path", lambda self, **kw: (seen.update(kw), original(self, **{**kw, "compile": None}))[1])
    monkeypatch.setattr(acceleration, "save_compile_cache", lambda path: saved.append(path))
    cache = tmp_path / "compile.bin"
    assert main([*base, "--compile", "--compile-cache", str(cache), "--out", str(tmp_path / "fast.png")]) == 0
    assert seen == {"cuda_graphs": "auto", "compile": "regional", "fuse_projections": True, "fuse_gelu": True, "vision_varlen": True, "fp8": False, "fp8_encoder": False} and saved == [cache]


@pytest.fixture
def negatives_seen(monkeypatch, tiny_pipe) -> list[list[str]]:
    """The negative prompts each `encode_prompt` call of `tiny_pipe` receives."""
    seen: list[list[str]] = []
    original = tiny_pipe.encode_prompt

    def encode_prompt(prompts, negative_prompts, *args, **kwargs):
        seen.append(list(negative_prompts))
        return original(prompts, negative_prompts, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe, "encode_prompt", encode_prompt)
    return seen


@pytest.mark.parametrize("edit_negative", [None, "", "washed out"])
def test_edit_negative_default_comes_from_the_model_config(tiny_pipe, negatives_seen, monkeypatch, edit_negative):
    import dataclasses

    from deepgen_core.config import DEFAULT_EDIT_NEGATIVE_PROMPT

    monkeypatch.setattr(tiny_pipe.encoder, "config", dataclasses.replace(tiny_pipe.encoder.config, edit_negative_prompt=edit_negative))
    ref = Image.new("RGB", (32, 32), (200, 30, 30))
    kwargs = {"num_inference_steps": 1, "generator": _gen(), "output_type": "latent"}
    tiny_pipe(["make it blue", "make it green"], image=ref, **kwargs)
    tiny_pipe("make it blue", image=ref, negative_prompt="a red square", **kwargs)  # an explicit negative wins
    tiny_pipe("a red circle", height=32, width=32, **kwargs)  # text-to-image keeps '' whatever the edit default
    default = DEFAULT_EDIT_NEGATIVE_PROMPT if edit_negative is None else edit_negative
    assert negatives_seen == [[default, default], ["a red square"], [""]]
