"""The inference fast path (deepgen_core.acceleration / fast_path) on the tiny model, on CPU.

What runs here: fused QKV, regional torch.compile (AOT-eager backend: the same graph capture and fullgraph
check as inductor, without a C++ toolchain), fp8 weight storage, offload modes, the graph runner's
bookkeeping and the per-step callback contract. CUDA graph replay itself is checked on the GPU by the benchmark
(max |delta| against the eager baseline in its table).
"""

from __future__ import annotations

import pytest
import torch

from deepgen_core.acceleration import DiTGraphRunner, FP8Linear, fuse_qkv, quantize_fp8, set_block_compile, unfuse_qkv
from deepgen_core.errors import DeepGenInputError
from deepgen_core.pipeline import DeepGenPipeline
from deepgen_core.presets import tiny_components, tiny_transformer


def _pipe() -> DeepGenPipeline:
    return DeepGenPipeline.from_components(tiny_components(seed=3))


def _latents(pipe: DeepGenPipeline, steps: int = 3, **kwargs) -> torch.Tensor:
    return pipe("a red cube", height=64, width=64, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).latents


def _dit_inputs(transformer, batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    cfg = transformer.config
    return (torch.randn(batch, 16, 8, 8, generator=gen), torch.randn(batch, 5, cfg.joint_attention_dim, generator=gen),
            torch.randn(batch, cfg.pooled_projection_dim, generator=gen), torch.tensor([500.0] * batch))


def test_fused_qkv_matches_separate_projections():
    transformer = tiny_transformer().eval()
    inputs = _dit_inputs(transformer)
    refs = [[torch.randn(16, 8, 8)] for _ in range(2)]
    with torch.no_grad():
        expected = transformer(*inputs, reference_latents=refs).sample
        # 3 blocks x joint attention + 2 dual-attention blocks x image self-attention
        assert fuse_qkv(transformer) == 5
        fused = transformer(*inputs, reference_latents=refs).sample
        unfuse_qkv(transformer)
        unfused = transformer(*inputs, reference_latents=refs).sample
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(unfused, expected)


def test_fused_qkv_shares_storage_with_the_separate_weights():
    transformer = tiny_transformer().eval()
    before = sum(p.numel() for p in transformer.parameters())
    fuse_qkv(transformer)
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in transformer.parameters()}
    assert sum(storages.values()) == before * 4  # fp32: the fused weights add no memory
    attn = transformer.transformer_blocks[0].attn
    with torch.no_grad():
        attn.to_k.weight.add_(1.0)  # an in-place update of a separate weight reaches the fused copy
    torch.testing.assert_close(attn.to_qkv.weight[attn.to_q.weight.shape[0] : 2 * attn.to_q.weight.shape[0]], attn.to_k.weight)


def test_regional_compile_equals_eager_and_keeps_the_step_callback():
    pipe = _pipe()
    expected = _latents(pipe)
    pipe.enable_fast_path(compile="regional", compile_kwargs={"backend": "aot_eager"})
    compiled_blocks = [b for b in pipe.transformer.transformer_blocks if getattr(b, "_compiled_call_impl", None) is not None]
    assert len(compiled_blocks) == len(pipe.transformer.transformer_blocks)
    steps = []
    out = _latents(pipe, callback_on_step_end=lambda p, i, t, tensors: steps.append(i))
    assert steps == [0, 1, 2]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_block_compile_switches_on_and_off_without_compiling_again(monkeypatch):
    """`set_block_compile` (ComfyUI's compiled model copies): each setting is compiled once and re-installed."""
    pipe = _pipe()
    expected = _latents(pipe)
    blocks = pipe.transformer.transformer_blocks
    compiles = []
    compile_blocks = type(pipe.transformer).compile_repeated_blocks
    monkeypatch.setattr(type(pipe.transformer), "compile_repeated_blocks", lambda self, **kw: compiles.append(kw) or compile_blocks(self, **kw))
    assert not set_block_compile(pipe.transformer, None)  # already eager
    assert set_block_compile(pipe.transformer, {"backend": "aot_eager"})
    first = [b._compiled_call_impl for b in blocks]
    assert all(first) and compiles == [{"fullgraph": True, "dynamic": True, "backend": "aot_eager"}]
    torch.testing.assert_close(_latents(pipe), expected, rtol=1e-5, atol=1e-5)
    assert not set_block_compile(pipe.transformer, {"backend": "aot_eager"})
    assert set_block_compile(pipe.transformer, None) and all(b._compiled_call_impl is None for b in blocks)
    assert _latents(pipe).equal(expected)
    assert set_block_compile(pipe.transformer, {"backend": "aot_eager"})
    assert [b._compiled_call_impl for b in blocks] == first and len(compiles) == 1
    assert set_block_compile(pipe.transformer, {"backend": "aot_eager", "dynamic": False})  # another setting: compiled once more
    assert len(compiles) == 2 and all(b._compiled_call_impl is not f for b, f in zip(blocks, first))


def test_fp8_linear_storage_and_accuracy():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    fp8 = FP8Linear(linear)
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        ref, out = linear(x), fp8(x)
    # e4m3 keeps 3 mantissa bits: a relative weight error of at most 2^-4 per element, far less on average
    assert out.shape == ref.shape
    assert ((out - ref).norm() / ref.norm()).item() < 0.03


def test_fp8_pipeline_runs_close_to_bf16_path():
    pipe = _pipe()
    expected = _latents(pipe, steps=2)
    n_linear = sum(isinstance(m, torch.nn.Linear) for b in pipe.transformer.transformer_blocks for m in b.modules())
    pipe.enable_fast_path(fp8=True)
    assert sum(isinstance(m, FP8Linear) for m in pipe.transformer.modules()) == n_linear
    out = _latents(pipe, steps=2)
    assert ((out - expected).norm() / expected.norm()).item() < 0.05


def test_fp8_encoder_quantises_vlm_and_vision_linears_and_stays_close():
    pipe = _pipe()
    expected = _latents(pipe, steps=2)
    vlm = pipe.encoder.vlm
    decoder = sum(type(m) is torch.nn.Linear for layer in vlm.language_model.layers for m in layer.modules())
    vision = sum(type(m) is torch.nn.Linear for block in vlm.visual.blocks for m in block.modules())
    embeds = vlm.language_model.embed_tokens.weight
    pipe.enable_fast_path(fp8_encoder=True)
    quantised = [m for m in pipe.encoder.modules() if isinstance(m, FP8Linear)]
    assert len(quantised) == decoder + vision and decoder > 0 and vision > 0
    assert vlm.language_model.embed_tokens.weight is embeds  # the embedding table stays as it was
    out = _latents(pipe, steps=2)
    assert not torch.equal(out, expected)  # the encoder's GEMMs did change...
    assert ((out - expected).norm() / expected.norm()).item() < 0.05  # ...within e4m3 rounding of its weights


def test_quantize_fp8_can_keep_adaln_in_full_precision():
    transformer = tiny_transformer()
    total = quantize_fp8(transformer, include_adaln=False)
    assert all(isinstance(b.norm1.linear, torch.nn.Linear) for b in transformer.transformer_blocks)
    assert total > 0


def test_cuda_graphs_fall_back_to_eager_off_cuda():
    pipe = _pipe()
    expected = _latents(pipe)
    pipe.enable_fast_path(cuda_graphs=True)
    assert pipe.velocity_function() == pipe._eager_velocity  # CPU: no graphs, same numbers
    assert torch.equal(_latents(pipe), expected)


def test_graph_runner_detects_moved_or_added_weights_and_unsupported_layouts():
    transformer = tiny_transformer().eval()
    runner = DiTGraphRunner(transformer)
    assert runner.is_valid_for(transformer)
    fuse_qkv(transformer)  # new Linear modules: captured graphs would not know them
    assert not runner.is_valid_for(transformer)
    runner.reset()
    assert runner.is_valid_for(transformer)
    transformer.proj_out.weight.data = transformer.proj_out.weight.data.clone()  # moved storage
    assert not runner.is_valid_for(transformer)
    assert not runner.supports(torch.zeros(1, 16, 8, 8), None)  # CPU tensors
    assert not runner.supports([torch.zeros(16, 8, 8)], None)  # per-sample sizes


def test_offload_model_moves_components_only_around_their_step():
    pipe = _pipe()
    expected = _latents(pipe)
    pipe.set_offload("model", "cpu")
    seen = {}
    original = pipe.encoder.forward

    def spy(*args, **kwargs):
        seen["encoder_device"] = next(pipe.encoder.parameters()).device
        return original(*args, **kwargs)

    pipe.encoder.forward = spy
    assert torch.equal(_latents(pipe), expected)
    assert seen["encoder_device"].type == "cpu" and pipe.device == torch.device("cpu")


def test_offload_model_moves_the_vision_tower_only_for_references(monkeypatch):
    import deepgen_core.fast_path as fast_path
    from PIL import Image

    pipe = _pipe()
    pipe.set_offload("model", "cpu")
    moved: list[set[int]] = []
    original = fast_path.move_tensors
    monkeypatch.setattr(fast_path, "move_tensors", lambda tensors, device: (moved.append({id(t) for t in tensors}), original(tensors, device)))
    visual = {id(t) for t in pipe.encoder.vlm.visual.parameters()}
    text = {id(t) for t in pipe.encoder.vlm.language_model.parameters()}
    _latents(pipe, steps=1)
    assert not any(m & visual for m in moved) and any(text <= m for m in moved)
    moved.clear()
    _latents(pipe, steps=1, image=Image.new("RGB", (64, 64), "red"))
    # the vision tower moves alone, before (not together with) the text model
    assert visual <= moved[0] and not moved[0] & text and any(text <= m and not m & visual for m in moved[1:])


def test_sequential_offload_gives_the_same_image():
    pipe = _pipe()
    expected = _latents(pipe)
    pipe.set_offload("sequential", "cpu")
    torch.testing.assert_close(_latents(pipe), expected, rtol=0, atol=0)
    with pytest.raises(DeepGenInputError, match="sequential"):
        pipe.enable_fast_path(compile="regional")


def test_switch_errors_and_vae_tiling():
    pipe = _pipe()
    with pytest.raises(DeepGenInputError, match="cuda_graphs"):
        pipe.enable_fast_path(cuda_graphs="always")
    with pytest.raises(DeepGenInputError, match="fp8 and fuse_projections"):
        pipe.enable_fast_path(fp8=True, fuse_projections=True)
    with pytest.raises(DeepGenInputError, match="offload"):
        pipe.set_offload("disk")
    pipe.enable_vae_tiling()
    assert pipe.vae.use_tiling
    pipe.enable_vae_tiling(False)
    assert not pipe.vae.use_tiling


# ------------------------------------------------------------------------------------------------ modulation


def test_precomputed_modulation_rows_equal_the_forward_s_own():
    from diffusers import SD3Transformer2DModel

    transformer = tiny_transformer().eval()
    hidden, context, pooled, timestep = _dit_inputs(transformer)
    timestep = torch.tensor([500.0, 250.0])
    sized = [torch.randn(16, 8, 8), torch.randn(16, 6, 10)]  # per-sample sizes take the padded path
    refs = [[torch.randn(16, 8, 8)], [torch.randn(16, 4, 4)]]
    with torch.no_grad():
        rows = transformer.modulation(timestep, pooled)
        assert rows.shape == (2, transformer._modulation_columns[-1][1])
        for args, kwargs in (((hidden,), {}), ((sized,), {"reference_latents": refs})):
            plain = transformer(*args, context, pooled, timestep, **kwargs).sample
            ahead = transformer(*args, context, None, None, modulation=rows, **kwargs).sample
            for a, b in zip(plain, ahead):
                torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    # the adaLN Linears are swapped in place: stock SD3 checkpoint names are unchanged
    stock = SD3Transformer2DModel(**{k: v for k, v in transformer.config.items() if not k.startswith("_")})
    assert transformer.state_dict().keys() == stock.state_dict().keys()
    stock.load_state_dict(transformer.state_dict())
    with torch.no_grad():
        expected = stock(hidden, context, pooled, timestep).sample
        torch.testing.assert_close(transformer(hidden, context, pooled, timestep).sample, expected, rtol=1e-6, atol=1e-6)


def test_denoise_precomputes_modulations_in_chunks(monkeypatch):
    from deepgen_core import fast_path

    pipe = _pipe()
    pipe.enable_fast_path(precompute_modulation=False)
    expected = _latents(pipe, steps=5)
    pipe.enable_fast_path()
    calls = []
    original = pipe.transformer.modulation
    monkeypatch.setattr(pipe.transformer, "modulation", lambda t, p: (calls.append(len(t)), original(t, p))[1])
    torch.testing.assert_close(_latents(pipe, steps=5), expected, rtol=1e-5, atol=1e-5)
    assert calls == [5 * 2]  # one table for the [uncond ; cond] batch of all 5 steps
    calls.clear()
    width = pipe.transformer._modulation_columns[-1][1]
    monkeypatch.setattr(fast_path, "MODULATION_CHUNK_BYTES", 2 * 2 * width * 4)  # two steps per chunk (fp32)
    torch.testing.assert_close(_latents(pipe, steps=5), expected, rtol=1e-5, atol=1e-5)
    assert calls == [4, 4, 2]  # steps 0-1, 2-3, 4: two CFG rows each


def test_offload_keeps_fused_qkv_weights_shared(monkeypatch):
    """A device move copies tensor by tensor; the separate q/k/v weights must come back as views of the fused
    ones (else every move leaves two copies of them on the GPU)."""
    from deepgen_core import fast_path

    pipe = _pipe()
    expected = _latents(pipe, steps=2)
    pipe.enable_fast_path(fuse_projections=True)
    copies = []

    def copy_like_a_device(tensors, device):  # what .to("cuda") does: new storage per tensor
        copies.append(len(tensors))
        for t in tensors:
            t.data = t.data.clone()

    monkeypatch.setattr(fast_path, "move_tensors", copy_like_a_device)
    monkeypatch.setattr(fast_path, "park_on_host", lambda tensors: copy_like_a_device(tensors, "cpu"))
    pipe.set_offload("model", "cpu")
    torch.testing.assert_close(_latents(pipe, steps=2), expected, rtol=1e-5, atol=1e-5)
    assert copies
    attn = pipe.transformer.transformer_blocks[0].attn
    fused = attn.to_qkv.weight.untyped_storage().data_ptr()
    assert all(p.weight.untyped_storage().data_ptr() == fused for p in (attn.to_q, attn.to_k, attn.to_v))
    added = attn.to_added_qkv.weight.untyped_storage().data_ptr()
    assert attn.add_k_proj.weight.untyped_storage().data_ptr() == added


def test_offload_model_parks_every_weight_including_the_vision_tower(monkeypatch):
    from deepgen_core import fast_path

    pipe = _pipe()
    pipe.enable_fast_path(fuse_projections=True)
    parked: set[int] = set()
    monkeypatch.setattr(fast_path, "park_on_host", lambda tensors: parked.update(id(t) for t in tensors))
    pipe.set_offload("model", "cpu")
    views = fast_path.fused_qkv_views(pipe.transformer)
    everything = {id(t) for m in (pipe.encoder, pipe.transformer, pipe.vae) for t in [*m.parameters(), *m.buffers()]}
    assert views and parked == everything - views


def test_regional_compile_does_not_recompile_for_other_sizes_batches_or_edits():
    """Dynamic shapes and block inputs that are never views (tokens, context, modulation rows): one graph per
    block kind, reused by other sizes, batches and references (each recompile costs ~20 s at real size; dynamo
    gives up after 8)."""
    from PIL import Image
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pipe = _pipe()
    pipe.enable_fast_path(compile="regional", fuse_projections=True, compile_kwargs={"backend": "aot_eager"})
    graphs = []
    for size, kwargs in (((64, 64), {}), ((96, 64), {"num_images_per_prompt": 2}), ((64, 64), {"image": Image.new("RGB", (64, 64), "red")})):
        pipe("a red cube", height=size[0], width=size[1], num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
        graphs.append(counters["stats"]["unique_graphs"])
    kinds = {(b.attn2 is not None, b.context_pre_only) for b in pipe.transformer.transformer_blocks}
    assert graphs == [len(kinds)] * 3
