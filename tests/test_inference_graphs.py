"""The encoder's inference CUDA graphs (`EncoderGraphRunner`) and the DiT MLP's fused GELU (`FusedGELU`).

On CPU: the runner's padded-batch mask gives exactly the plain encoder's output, it is only used where graphs apply,
and the fused GELU falls back to diffusers' forward. On CUDA (skipped here, run on the device): a shape is captured on
its second use, replays equal the eager call, and the fused GELU equals Linear + tanh-GELU within bf16 rounding.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.activations import GELU

from deepgen_core.acceleration import (
    EncoderGraphRunner,
    FusedGELU,
    causal_padding_mask,
    set_gelu_fusion,
    set_vision_varlen_attention,
    weights_fingerprint,
)
from deepgen_core.errors import DeepGenInputError
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import tiny_components

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PROMPTS, NEGATIVES = ["a red circle on a blue background"], ["x"]  # different lengths: a padded batch


def _assert_same(a, b) -> None:
    for name in ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _pipe(device: str = "cpu", dtype: torch.dtype = torch.float32) -> DeepGenPipeline:
    pipe = DeepGenPipeline.from_components(tiny_components(seed=5, dtype=dtype))
    return pipe.to(device)


def test_causal_padding_mask_is_causal_over_real_keys():
    mask = torch.tensor([[False, True, True], [True, True, True]])
    full = causal_padding_mask(mask)
    assert full.shape == (2, 1, 3, 3) and full.dtype == torch.bool
    assert full[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert full[0, 0].tolist() == [[False, False, False], [False, True, False], [False, True, True]]  # the pad query sees no key


def test_encoder_runner_equals_the_plain_encoder_for_padded_and_unpadded_batches():
    pipe = _pipe()
    runner = EncoderGraphRunner(pipe.encoder)
    with torch.no_grad():
        for prompts, negatives in ((PROMPTS, NEGATIVES), (PROMPTS, PROMPTS)):
            plain = pipe.encode_prompt(prompts, negatives)
            pipe.encoder_core = lambda: runner  # this call only
            try:
                ours = pipe.encode_prompt(prompts, negatives)
            finally:
                del pipe.encoder_core
            _assert_same(ours, plain)
    assert not runner._graphs and len(runner._seen) == 2  # CPU: eager every time (one padded, one unpadded shape)


@torch.no_grad()
def test_pipeline_uses_encoder_graphs_only_where_they_apply():
    pipe = _pipe()
    assert pipe.encoder_core() is None  # CPU, graphs "auto"
    pipe.enable_fast_path(cuda_graphs=True)
    runner = pipe.encoder_core()
    assert isinstance(runner, EncoderGraphRunner) and pipe.encoder_core() is runner
    with torch.enable_grad():
        assert pipe.encoder_core() is None  # training / RL log-probs: plain
    pipe.encoder.train()
    assert pipe.encoder_core() is None
    pipe.encoder.eval()
    weight = next(pipe.encoder.bridge.parameters())
    weight.data = weight.data.clone()  # moved weights: captured graphs would read the old addresses
    fresh = pipe.encoder_core()
    assert isinstance(fresh, EncoderGraphRunner) and fresh is not runner
    pipe.set_offload("model", "cpu")
    assert pipe.encoder_core() is None  # offload moves the weights every call
    pipe.set_offload("none", "cpu")
    assert pipe.encoder_core() is not fresh  # offload switches drop the graphs
    pipe.set_cuda_graphs(False)
    assert pipe.encoder_core() is None


def test_fused_gelu_switches_class_and_falls_back_off_cuda():
    pipe = _pipe()
    expected = pipe("a red cube", height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent").latents
    mlps = [m for m in pipe.transformer.modules() if isinstance(m, GELU)]
    assert set_gelu_fusion(pipe.transformer) == len(mlps) > 0
    assert all(type(m) is FusedGELU for m in mlps)
    latents = pipe("a red cube", height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent").latents
    assert torch.equal(latents, expected)  # CPU: diffusers' own forward
    pipe.enable_fast_path(fuse_gelu=False)
    assert all(type(m) is GELU for m in mlps)
    names = [n for n, _ in pipe.transformer.named_parameters()]
    set_gelu_fusion(pipe.transformer)
    assert [n for n, _ in pipe.transformer.named_parameters()] == names


@cuda
def test_encoder_graph_captures_on_second_use_and_replays_the_eager_result():
    pipe = _pipe("cuda", torch.bfloat16)
    pipe.enable_fast_path(cuda_graphs=True)
    with torch.no_grad():
        pipe.encoder_core = lambda: None
        plain = pipe.encode_prompt(PROMPTS, NEGATIVES)
        del pipe.encoder_core
        first = pipe.encode_prompt(PROMPTS, NEGATIVES)
        runner = pipe.encoder_core()
        assert not runner._graphs  # first use: eager
        second = pipe.encode_prompt(PROMPTS, NEGATIVES)
        assert len(runner._graphs) == 1  # second use: captured (and replayed)
        third = pipe.encode_prompt(PROMPTS, ["another negative prompt"])  # a new length: eager again
        fourth = pipe.encode_prompt(PROMPTS, NEGATIVES)
    assert len(runner._graphs) == 1
    for out in (first, second, fourth):
        _assert_same(out, plain)
    assert third.prompt_embeds.shape[1] != plain.prompt_embeds.shape[1]


@cuda
def test_fused_gelu_equals_linear_and_tanh_gelu_on_cuda():
    torch.manual_seed(0)
    module = GELU(64, 256, approximate="tanh").cuda().to(torch.bfloat16)
    x = torch.randn(3, 17, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = module(x).float()
        module.__class__ = FusedGELU
        fused = module(x).float()
    assert fused.shape == expected.shape
    assert ((fused - expected).norm() / expected.norm()).item() < 1e-2


def test_fuse_gelu_after_a_compile_is_refused_and_compile_vae_compiles_the_decoder():
    pipe = _pipe()
    block = pipe.transformer.transformer_blocks[0]
    block._compiled_call_impl = block.forward  # what an earlier regional compile leaves on each block
    with pytest.raises(DeepGenInputError, match="fuse_gelu must be set before or together with compile"):
        pipe.enable_fast_path(fuse_gelu=True)
    assert not any(isinstance(m, FusedGELU) for m in pipe.transformer.modules())
    block._compiled_call_impl = None
    assert pipe.vae.decoder._compiled_call_impl is None
    pipe.enable_fast_path(compile_vae=True)
    assert pipe.vae.decoder._compiled_call_impl is not None and pipe.vae.encoder._compiled_call_impl is None


def test_weights_fingerprint_sees_moved_weights_buffers_and_attention_processors():
    pipe = _pipe()
    dit = pipe.transformer
    before = weights_fingerprint(dit)
    assert weights_fingerprint(dit) == before
    n_tensors = len(list(dit.parameters())) + len(list(dit.buffers()))
    assert sum(isinstance(x, int) for x in before) == n_tensors  # every parameter and buffer once
    dit.proj_out.bias.data = dit.proj_out.bias.data.clone()
    moved = weights_fingerprint(dit)
    assert moved != before
    processor = dit.transformer_blocks[0].attn.processor
    dit.transformer_blocks[0].attn.processor = type(processor)()  # a new instance of the same kind: same fingerprint
    assert weights_fingerprint(dit) == moved
    dit.transformer_blocks[0].attn.processor._attention_backend = "_native_efficient"  # this processor only
    assert weights_fingerprint(dit) != moved


@cuda
def test_compiled_fused_pipeline_on_cuda_stays_close_to_the_plain_one():
    """`--compile`'s settings in one call (regional compile, fused q/k/v and GELU) against the plain bf16 pipeline."""
    pipe = _pipe("cuda", torch.bfloat16)

    def render() -> torch.Tensor:
        return pipe("a red cube", height=64, width=64, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent").latents.float()

    plain = render()
    pipe.enable_fast_path(cuda_graphs=True, compile="regional", fuse_projections=True, fuse_gelu=True)
    assert all(type(m) is FusedGELU for m in pipe.transformer.modules() if isinstance(m, GELU))
    fast = render()
    assert ((fast - plain).norm() / plain.norm()).item() < 0.05


def _reference_pixels(pipe: DeepGenPipeline):
    import numpy as np
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(0).random((96, 80, 3)) * 255).astype(np.uint8))
    return pipe.prepare_reference_pixels([image], 1, "dynamic", 96)


@torch.no_grad()
def test_vision_varlen_attention_routes_every_window_layer_and_switches_back(monkeypatch):
    from deepgen_core import acceleration
    from deepgen_core.acceleration import vision_attention

    pipe = _pipe()
    refs = _reference_pixels(pipe)
    expected = pipe.encode_reference_tokens(refs).embeds
    windows = []
    original = vision_attention._vision_varlen_attention
    monkeypatch.setattr(vision_attention, "_vision_varlen_attention", lambda *a, **k: (windows.append(len(k["cu_seq_lens_q"]) - 1), original(*a, **k))[1])
    assert set_vision_varlen_attention(pipe.encoder)
    ours = pipe.encode_reference_tokens(refs).embeds
    assert len(windows) == pipe.encoder.vlm.visual.config.depth and max(windows) > 1  # every layer, windowed ones too
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)  # CPU: the same per-window SDPA
    assert not set_vision_varlen_attention(pipe.encoder, False)
    assert pipe.encoder.vlm.visual.config._attn_implementation == "sdpa"
    pipe.enable_fast_path(vision_varlen=True)
    assert pipe.encoder.vlm.visual.config._attn_implementation == acceleration.VISION_VARLEN_ATTENTION
    pipe.enable_fast_path()  # None keeps it
    assert pipe.encoder.vlm.visual.config._attn_implementation == acceleration.VISION_VARLEN_ATTENTION
    pipe.enable_fast_path(vision_varlen=False)
    assert pipe.encoder.vlm.visual.config._attn_implementation == "sdpa"


@cuda
@torch.no_grad()
def test_vision_varlen_attention_on_cuda_equals_per_window_sdpa():
    pipe = _pipe("cuda", torch.bfloat16)
    refs = _reference_pixels(pipe)
    expected = pipe.encode_reference_tokens(refs).embeds.float()
    assert set_vision_varlen_attention(pipe.encoder)
    ours = pipe.encode_reference_tokens(refs).embeds.float()
    assert ((ours - expected).norm() / expected.norm()).item() < 1e-2
