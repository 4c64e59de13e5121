"""Inference fast path for the DiT: CUDA graphs, regional `torch.compile`, fused QKV and fp8 weights.

Each helper is opt-in and independent; `DeepGenPipeline.enable_fast_path` (the mixin in `fast_path.py`) wires
them into the pipeline. What is exact and what is not:

- CUDA graphs (`DiTGraphRunner`) replay the very kernels of an eager forward: bit-identical outputs, no host
  work per step beyond copying the inputs into static buffers. One graph per input shape. `EncoderGraphRunner`
  does the same for the encoder's text model and bridge (captured on a shape's second use).
- `compile_transformer` (inductor, per block) fuses elementwise work (RMS qk-norm, adaLN modulation, GELU):
  equal to the eager path within bf16 rounding.
- `fuse_qkv` concatenates the q/k/v weights into one GEMM (diffusers' `Attention.fuse_projections`): equal
  within float rounding. `set_gelu_fusion` runs the MLPs' first GEMM with a GELU epilogue: within bf16 rounding.
- Precomputed adaLN modulations (`DeepGenSD3Transformer.modulation`, `fast_path.ModulationSchedule`) are given
  to the graph runner as one more input.
- `quantize_fp8` stores the block Linear weights in float8 (e4m3, one scale per output channel) and, on GPUs
  with fp8 tensor cores, also runs the GEMMs in fp8: NOT exact; it halves the DiT's weight memory.

Training (`model.compile` of the train config) reuses `compile_transformer` and compiles the encoder with
`compile_encoder_for_training`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from torch import nn

from .models.transformer import ModulationMixin

logger = logging.getLogger(__name__)

CompileMode = Literal["regional", "full"]
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value


# ------------------------------------------------------------------------------------------------ CUDA graphs


def weights_fingerprint(*modules: nn.Module) -> tuple:
    """The addresses of every parameter and buffer of `modules`, and each diffusers attention's processor class and
    backend, in one walk over the modules: what a captured CUDA graph depends on. (`parameters()`, `buffers()` and
    diffusers' `attn_processors` walk the tree once each: 6.6 ms per call for the real DiT on the H100's host, and
    this walk a third of that on CPU; it runs once per denoising loop and once per encode.)"""
    out: list = []
    for module in modules:
        for m in module.modules():
            out.extend(t.data_ptr() for t in m._parameters.values() if t is not None)
            out.extend(t.data_ptr() for t in m._buffers.values() if t is not None)
            processor = m.__dict__.get("processor")  # diffusers `Attention` keeps it as a plain attribute
            if processor is not None:
                out.append((type(processor).__name__, str(getattr(processor, "_attention_backend", None))))
    return tuple(out)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]  # static buffers, in the order the runner flattens its arguments
    output: torch.Tensor | tuple[torch.Tensor, ...]


def _flatten(hidden_states, encoder_hidden_states, pooled_projections, timestep, reference_latents, modulation) -> list[torch.Tensor]:
    refs = [t for sample in reference_latents for t in sample] if reference_latents is not None else []
    mod = [modulation] if modulation is not None else []
    return [hidden_states, encoder_hidden_states, pooled_projections, timestep, *mod, *refs]


def _capture_graph(forward: Callable[[Sequence[torch.Tensor]], object], flat: Sequence[torch.Tensor], warmup: int, pool) -> _Captured:
    """Capture `forward` over static copies of `flat` into the memory `pool`, after `warmup` eager calls on a side
    stream (cuBLAS/cuDNN handles, compile and autotuning must not happen during a capture)."""
    static = tuple(t.detach().clone() for t in flat)
    side = torch.cuda.Stream(device=static[0].device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            forward(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = forward(static)
    torch.cuda.synchronize()
    return _Captured(graph, static, output)


class DiTGraphRunner:
    """Runs `DeepGenSD3Transformer.forward` as a replayed CUDA graph, one graph per input signature.

    The first call with a new signature warms up on a side stream (this is also where `torch.compile` compiles
    and autotunes), then captures; later calls copy the inputs into the static buffers and replay. The caller
    gets a fresh tensor (a clone of the static output), so callbacks may keep it across steps. Graphs read the
    weights from the addresses they had at capture: `is_valid_for` detects moved / added parameters (offload,
    LoRA injection) and the caller drops the graphs with `reset`. In-place weight updates are seen as usual.

    Args:
        transformer: the DiT, already on its CUDA device.
        warmup: eager forwards before each capture (cuBLAS/cuDNN/compile setup must not happen during capture).
    """

    def __init__(self, transformer: nn.Module, warmup: int = 2) -> None:
        self.transformer = transformer
        self.warmup = warmup
        self.capture_seconds: dict[tuple, float] = {}
        self._graphs: dict[tuple, _Captured] = {}
        self._pool = None
        self._fingerprint = self.fingerprint(transformer)

    @staticmethod
    def fingerprint(transformer: nn.Module) -> tuple:
        """Parameter and buffer addresses plus the attention processors: what a captured graph depends on."""
        return weights_fingerprint(transformer)

    def is_valid_for(self, transformer: nn.Module) -> bool:
        return transformer is self.transformer and self.fingerprint(transformer) == self._fingerprint

    def reset(self) -> None:
        """Drop every graph and its memory pool."""
        self._graphs.clear()
        self._pool = None
        self._fingerprint = self.fingerprint(self.transformer)

    @staticmethod
    def supports(hidden_states, reference_latents) -> bool:
        """Graphs need one fixed layout: a batched latent tensor and the same reference shapes in every sample."""
        if not torch.is_tensor(hidden_states) or not hidden_states.is_cuda:
            return False
        if reference_latents is None:
            return True
        shapes = {tuple(t.shape for t in sample) for sample in reference_latents}
        return len(shapes) == 1 and all(torch.is_tensor(t) for sample in reference_latents for t in sample)

    def __call__(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        reference_latents: Sequence[Sequence[torch.Tensor]] | None = None,
        modulation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same arguments and result as the DiT forward's `.sample` (uniform batch only, see `supports`)."""
        flat = _flatten(hidden_states, encoder_hidden_states, pooled_projections, timestep, reference_latents, modulation)
        n_refs = None if reference_latents is None else [len(s) for s in reference_latents]
        has_mod = modulation is not None
        key = (tuple((tuple(t.shape), t.dtype, t.device) for t in flat), None if n_refs is None else tuple(n_refs), has_mod)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, flat, n_refs, has_mod)
        for static, value in zip(entry.inputs, flat):
            static.copy_(value, non_blocking=True)
        entry.graph.replay()
        return entry.output.clone()

    def _forward(self, flat: Sequence[torch.Tensor], n_refs: list[int] | None, has_mod: bool) -> torch.Tensor:
        hidden_states, context, pooled, timestep, *rest = flat
        modulation, refs = (rest[0], rest[1:]) if has_mod else (None, rest)
        nested = None
        if n_refs is not None:
            offsets = [sum(n_refs[:i]) for i in range(len(n_refs) + 1)]
            nested = [refs[offsets[i] : offsets[i + 1]] for i in range(len(n_refs))]
        return self.transformer(hidden_states, context, pooled, timestep, reference_latents=nested, modulation=modulation).sample

    def _capture(self, key: tuple, flat: Sequence[torch.Tensor], n_refs: list[int] | None, has_mod: bool) -> _Captured:
        start = time.perf_counter()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Graphs share one pool: they never run concurrently and every output is cloned right after replay.
        entry = _capture_graph(lambda static: self._forward(static, n_refs, has_mod), flat, self.warmup, self._pool)
        self.capture_seconds[key] = time.perf_counter() - start
        logger.info("captured a DiT CUDA graph for %s in %.2f s", [s.shape for s in entry.inputs[:1]], self.capture_seconds[key])
        self._graphs[key] = entry
        return entry


def causal_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) left-padding mask (True = token) -> the (B, 1, L, L) boolean mask transformers builds from it for SDPA:
    query i sees key j when j <= i and j is a token (a pad query sees no key: SDPA gives it a zero output)."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return causal[None, None] & mask.bool()[:, None, None, :]


class EncoderGraphRunner:
    """Runs `DeepGenEncoder.encode_embeddings` (the VLM text model and the SCB bridge: thousands of small kernels at
    real size) as a replayed CUDA graph, one per input shape, for inference (`DeepGenEncoder.forward(core=...)`).

    Prompt lengths vary, so a shape is captured on its second use: a one-off prompt runs eagerly and pays nothing,
    a repeated one (seed sweeps, queues, benchmarks) replays from then on. Padded batches get the 4-D boolean mask
    transformers would build (`causal_padding_mask`), prepared outside the graph: transformers' own 2-D mask
    handling reads the GPU back, which a capture does not allow. Exact: the same kernels and the same mask (equal
    to the 2-D path by test). At most `max_graphs` shapes are kept; further ones run eagerly. Graphs read the
    weights at their capture addresses (`is_valid_for`, as for `DiTGraphRunner`).

    Args:
        encoder: the `DeepGenEncoder`, on its CUDA device.
        warmup: eager runs on a side stream before a capture.
        max_graphs: most shapes captured.
    """

    def __init__(self, encoder: nn.Module, warmup: int = 1, max_graphs: int = 8) -> None:
        self.encoder, self.warmup, self.max_graphs = encoder, warmup, max_graphs
        self.capture_seconds: dict[tuple, float] = {}
        self._graphs: dict[tuple, _Captured] = {}
        self._seen: set[tuple] = set()
        self._pool = None
        self._fingerprint = self.fingerprint(encoder)

    @staticmethod
    def fingerprint(encoder: nn.Module) -> tuple:
        """Addresses of the text model's and the bridge's parameters and buffers (the vision tower is not graphed)."""
        return weights_fingerprint(encoder.vlm.language_model, encoder.bridge)

    def is_valid_for(self, encoder: nn.Module) -> bool:
        return encoder is self.encoder and self.fingerprint(encoder) == self._fingerprint

    def __call__(self, inputs_embeds: torch.Tensor, mask: torch.Tensor | None, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode_embeddings`' arguments (`mask`: (B, L) bool or None) and result (context, pooled)."""
        flat = [inputs_embeds, position_ids] + ([] if mask is None else [causal_padding_mask(mask)])
        key = tuple((tuple(t.shape), t.dtype) for t in flat)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._seen or len(self._graphs) >= self.max_graphs or not inputs_embeds.is_cuda:
                self._seen.add(key)
                return self._forward(flat)
            entry = self._capture(key, flat)
        for static, value in zip(entry.inputs, flat):
            static.copy_(value, non_blocking=True)
        entry.graph.replay()
        return tuple(t.clone() for t in entry.output)

    def _forward(self, flat: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs_embeds, position_ids, *mask = flat
        return self.encoder.encode_embeddings(inputs_embeds, mask[0] if mask else None, position_ids)

    def _capture(self, key: tuple, flat: Sequence[torch.Tensor]) -> _Captured:
        start = time.perf_counter()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        entry = _capture_graph(self._forward, flat, self.warmup, self._pool)
        self.capture_seconds[key] = time.perf_counter() - start
        logger.info("captured an encoder CUDA graph for %s in %.2f s", tuple(entry.inputs[0].shape), self.capture_seconds[key])
        self._graphs[key] = entry
        return entry


# ------------------------------------------------------------------------------------------------ vision attention

# transformers sends the Qwen2.5-VL vision tower's windowed attention through `cu_seqlens` (one varlen call per
# layer) only for implementations whose name contains "flash"; every other one splits the windows on the host
# (`lengths.tolist()`) and runs one SDPA call per window: ~25 calls and a host sync per layer for a 512^2 reference.
VISION_VARLEN_ATTENTION = "deepgen_flash_varlen_sdpa"


def _vision_varlen_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, is_causal=False, **kwargs):
    """(1, H, T, D) q/k/v of all windows -> (1, T, H, D): torch's flash-attention varlen kernel over the windows
    `cu_seq_lens_q` delimits (CUDA), else one SDPA call per window (the split transformers does)."""
    if dropout or is_causal or attention_mask is not None:
        raise ValueError("the vision varlen attention supports inference only: no dropout, mask or causal attention.")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention.varlen import varlen_attn

        cu_q, cu_k = cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32)
        out = varlen_attn(q, k, v, cu_q, cu_k, int(max_length_q), int(max_length_k), scale=scaling)
        return out[None], None
    bounds = cu_seq_lens_q.tolist()
    pieces = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=scaling).transpose(0, 1)
              for a, b in itertools.pairwise(bounds)]
    return torch.cat(pieces)[None], None


def vision_varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def set_vision_varlen_attention(encoder: nn.Module, enabled: bool = True) -> bool:
    """Route the vision tower's windowed attention through one varlen flash-attention call per layer (`enabled`), or
    back to the default implementation. Returns whether the varlen path is now set. Equal to the per-window SDPA
    within bf16 rounding (another kernel over the same windows)."""
    from transformers import AttentionInterface

    visual = getattr(getattr(encoder, "vlm", None), "visual", None)
    if visual is None:
        return False
    config = visual.config
    if enabled:
        if not vision_varlen_available():
            return False
        AttentionInterface.register(VISION_VARLEN_ATTENTION, _vision_varlen_attention)
        if config._attn_implementation != VISION_VARLEN_ATTENTION:
            encoder.__dict__["_vision_attention_before"] = config._attn_implementation
            config._attn_implementation = VISION_VARLEN_ATTENTION
        return True
    if config._attn_implementation == VISION_VARLEN_ATTENTION:
        config._attn_implementation = encoder.__dict__.pop("_vision_attention_before", "sdpa")
    return False


# ------------------------------------------------------------------------------------------------ compile


def compile_transformer(transformer: nn.Module, mode: CompileMode = "regional", **compile_kwargs) -> nn.Module:
    """`torch.compile` the DiT in place.

    Args:
        transformer: the DiT.
        mode: `regional` compiles each `JointTransformerBlock` (diffusers' `compile_repeated_blocks`: three
            distinct block graphs, compiled in well under a minute) and leaves the light per-call glue eager;
            `full` compiles the whole forward (longer compile, one graph per input layout).
        compile_kwargs: passed to `torch.compile` (e.g. `dynamic=`, `mode=`); for `regional` the defaults are
            `fullgraph=True` (a graph break is an error, not a silent slowdown) and `dynamic=True` (measured on an
            H100: ~3-5% slower per forward than shape-specialised kernels, but one ~45 s compile for all sizes).
            `dynamic=False` compiles each of the three block kinds once per input shape (~20 s each), and dynamo
            stops recompiling a function after `torch._dynamo.config.recompile_limit` (8) graphs: fine for one or
            two resolutions.
    """
    if mode == "regional":
        # Dynamic shapes by default: the three block variants (dual-attention, plain, last) then compile once for
        # every image size and batch, instead of once per shape (dynamo's default stops at 8 recompiles).
        transformer.compile_repeated_blocks(**{"fullgraph": True, "dynamic": True, **compile_kwargs})
    elif mode == "full":
        transformer.compile(**compile_kwargs)
    else:
        raise ValueError(f"compile mode must be 'regional' or 'full', got {mode!r}.")
    return transformer


def set_block_compile(transformer: nn.Module, compile_kwargs: dict | None) -> bool:
    """Switch the regional compile of the DiT's blocks on (`compile_kwargs`, as for `compile_transformer`) or off
    (None), for hosts where one set of weights serves both a compiled and a plain model (ComfyUI's model copies).

    `compile_transformer` installs a compiled call on each block for good; this keeps the compiled callables of
    every setting used so far on the transformer and re-installs or removes them, so switching back and forth
    never compiles again (dynamo's cache lives in those callables). Returns True when the blocks' call changed:
    CUDA graphs captured before then replay the other forward and must be dropped.
    """
    blocks = [b for b in transformer.modules() if type(b).__name__ in getattr(transformer, "_repeated_blocks", ())]
    stash: dict = transformer.__dict__.setdefault("_deepgen_compiled_blocks", {})
    key = None if compile_kwargs is None else tuple(sorted({"fullgraph": True, "dynamic": True, **compile_kwargs}.items()))
    # `nn.Module.compile` keeps its compiled call in `_compiled_call_impl` (torch >= 2.2); None runs the plain forward.
    # Setting it directly is the only way to take a compile back without rebuilding the module.
    before = [b.__dict__.get("_compiled_call_impl") for b in blocks]
    if key is not None and key not in stash:
        compile_transformer(transformer, "regional", **compile_kwargs)
        stash[key] = [b._compiled_call_impl for b in blocks]
    wanted = [None] * len(blocks) if key is None else stash[key]
    for block, call in zip(blocks, wanted):
        block._compiled_call_impl = call
    return any(old is not new for old, new in zip(before, wanted))


# The vision blocks are left eager: their attention splits windows on the host (graph breaks), and compiling
# them made a 1-reference edit encode slower on an H100 (154 -> 203 ms).
ENCODER_BLOCKS = ("Qwen2_5_VLDecoderLayer", "SiglipEncoderLayer")


def compile_encoder(encoder: nn.Module, **compile_kwargs) -> int:
    """Regional `torch.compile` of the conditioning encoder: the VLM decoder layers and the connector layers.

    The encoder runs once per image but eagerly it is host-bound (hundreds of small kernels per layer). Prompt
    lengths vary, so shapes are dynamic by default; graph breaks are allowed (the vision attention splits its
    windows on the host). Returns the number of compiled blocks.
    """
    count = 0
    for module in encoder.modules():
        if type(module).__name__ in ENCODER_BLOCKS:
            module.compile(**{"dynamic": True, **compile_kwargs})
            count += 1
    return count


def compile_encoder_for_training(encoder: nn.Module, capturable: bool = False, **compile_kwargs) -> dict[str, int]:
    """Regional `torch.compile` of the encoder parts that run with gradients: the parts of every VLM decoder layer
    (attention, MLP, the two RMS norms) and the connector layers. The vision tower runs without gradients and
    stays eager (see `ENCODER_BLOCKS`).

    Why the parts of a decoder layer and not the layer (as `compile_encoder` does for inference): transformers
    calls the gradient checkpoint inside the layer's forward (`GradientCheckpointingLayer`), and dynamo cannot
    trace a checkpointed region that holds a graph break. The attention holds one: transformers' output-capture
    hook reads a `ContextVar`, which dynamo does not trace. A whole compiled layer therefore runs entirely eager
    under gradient checkpointing; its parts compile with or without it, and the checkpoint stays outside them (as
    diffusers does for the DiT blocks). peft LoRA layers inside the parts trace without a break.

    Args:
        encoder: a `DeepGenEncoder` (its `vlm.language_model.layers` and `bridge.connector.layers`).
        capturable: only the MLP and the norms of each decoder layer (`train.graphs` captures the encoder core in
            a CUDA graph; the attention's graph break, and on an H100 the compiled connector with it, invalidated
            the capture).
        compile_kwargs: passed to `torch.compile`; defaults `fullgraph=True` (a graph break is an error) except
            for the attention (the hook's break after its forward is expected) and `dynamic=True` (prompt
            lengths vary).

    Returns:
        The number of compiled modules per kind: `vlm_layer_parts`, `connector_layers`.
    """
    options = {"fullgraph": True, "dynamic": True, **compile_kwargs}
    counts = {"vlm_layer_parts": 0, "connector_layers": 0}
    for layer in encoder.vlm.language_model.layers:
        for part in layer.children():
            if capturable and part is layer.self_attn:
                continue
            part.compile(**({**options, "fullgraph": False} if part is layer.self_attn else options))
            counts["vlm_layer_parts"] += 1
    for layer in [] if capturable else encoder.bridge.connector.layers:
        layer.compile(**options)
        counts["connector_layers"] += 1
    return counts


def save_compile_cache(path: str | Path) -> int:
    """Write torch's compile artefacts (inductor kernels, autotune results) of this process to `path`.

    Loading them with `load_compile_cache` in a new process before the first call turns the compile warm-up
    into a cache hit. Returns the number of bytes written (0 when nothing was compiled).
    """
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return 0
    data = artifacts[0]
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def load_compile_cache(path: str | Path) -> bool:
    """Load artefacts written by `save_compile_cache`; False if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return False
    torch.compiler.load_cache_artifacts(path.read_bytes())
    return True


# ------------------------------------------------------------------------------------------------ fused QKV


def _fused_groups(transformer: nn.Module) -> list[tuple[nn.Linear, tuple[nn.Linear, ...]]]:
    """(fused Linear, its separate parts) of every fused attention projection."""
    groups = []
    for module in transformer.modules():
        if getattr(module, "fused_projections", False) and hasattr(module, "to_qkv"):
            groups.append((module.to_qkv, (module.to_q, module.to_k, module.to_v)))
            if getattr(module, "to_added_qkv", None) is not None:
                groups.append((module.to_added_qkv, (module.add_q_proj, module.add_k_proj, module.add_v_proj)))
    return groups


def fuse_qkv(transformer: nn.Module) -> int:
    """Fuse q/k/v (and the context stream's q/k/v) of every attention into one Linear each; returns the count.

    Uses diffusers' `Attention.fuse_projections`; `DeepGenJointAttnProcessor` uses the fused weights when
    `attn.fused_projections` is set. The separate weights become views into the fused ones: no extra memory,
    checkpoint names unchanged. The fused path ignores adapters injected later into `to_q`/`to_k`/`to_v`: merge
    or attach a LoRA before fusing, or `unfuse_qkv` first (training does).
    """
    count = 0
    for module in transformer.modules():
        if hasattr(module, "fuse_projections") and getattr(module, "to_q", None) is not None:
            module.fuse_projections()
            count += 1
    reshare_fused_qkv(transformer)
    return count


def fused_qkv_views(transformer: nn.Module) -> set[int]:
    """ids of the separate q/k/v parameters that are views of fused ones (movers skip them, then reshare)."""
    return {id(p) for _, parts in _fused_groups(transformer) for part in parts for p in part.parameters()}


def reshare_fused_qkv(transformer: nn.Module) -> None:
    """Make the separate projections views of the fused ones again: no extra memory, and an in-place update of
    either (training, LoRA merge) is seen by both. Needed after anything that moves parameters one by one
    (`.to()`, offload), which would otherwise leave two copies of every q/k/v weight on the device."""
    for fused, parts in _fused_groups(transformer):
        start = 0
        for part in parts:
            rows = part.weight.shape[0]
            part.weight.data = fused.weight.data[start : start + rows]
            if part.bias is not None:
                part.bias.data = fused.bias.data[start : start + rows]
            start += rows


def unfuse_qkv(transformer: nn.Module) -> None:
    for module in transformer.modules():
        if getattr(module, "fused_projections", False):
            module.fused_projections = False
            for name in ("to_qkv", "to_added_qkv"):
                if hasattr(module, name):
                    delattr(module, name)


# ------------------------------------------------------------------------------------------------ fused GELU


class FusedGELU(GELU):
    """diffusers' `GELU` (a Linear, then tanh-approximated GELU: the DiT MLP's first half) as one cuBLASLt GEMM with a
    bias + GELU epilogue (`torch._addmm_activation`, tanh approximation on CUDA) in CUDA inference, instead of a GEMM
    and a separate element-wise pass over the (tokens, 4 x hidden) activations. inductor keeps the op as an extern
    kernel (it does not decompose it), so it also holds under `torch.compile`. Equal within bf16 rounding (the GELU
    reads the fp32 accumulator instead of a bf16-rounded GEMM output). Everywhere else (CPU, autograd, a Linear
    replaced by an adapter or a host's own class, another dtype) it is diffusers' forward.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        proj = self.proj
        if (
            hidden_states.is_cuda
            and not torch.is_grad_enabled()
            and type(proj) is nn.Linear
            and proj.bias is not None
            and hidden_states.dtype == proj.weight.dtype
        ):
            rows = hidden_states.reshape(-1, proj.in_features)
            out = torch._addmm_activation(proj.bias, rows, proj.weight.t(), use_gelu=True)
            return out.reshape(*hidden_states.shape[:-1], proj.out_features)
        return super().forward(hidden_states)


def set_gelu_fusion(transformer: nn.Module, enabled: bool = True) -> int:
    """Switch every tanh-approximated diffusers `GELU` of the DiT (the MLPs) to `FusedGELU` (or back with
    `enabled=False`), in place: same parameters and names. Returns how many modules now have the asked class."""
    count = 0
    for module in transformer.modules():
        if isinstance(module, GELU) and module.approximate == "tanh":
            module.__class__ = FusedGELU if enabled else GELU
            count += 1
    return count


# ------------------------------------------------------------------------------------------------ fp8


def _fp8_gemm_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in float8 e4m3 with one fp32 scale per output channel.

    On GPUs with fp8 tensor cores (compute capability >= 8.9) the input is quantised per row on the fly and the
    GEMM is `torch._scaled_mm` with row-wise scales (fp8 inputs, fp32 accumulation, `dtype` output);
    elsewhere the weight is dequantised to `dtype` for a plain matmul (storage saving only).

    Args:
        linear: the Linear to replace (its weight is read once).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(FP8_DTYPE))
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # (1, out_features) fp32
        self.bias = linear.bias
        self.dtype = linear.weight.dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.use_scaled_mm = _fp8_gemm_available(weight.device) and self.in_features % 16 == 0 and self.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features) in the original weight dtype."""
        rows = x.reshape(-1, self.in_features)
        if self.use_scaled_mm and x.is_cuda:
            out = self._scaled_mm(rows)
        else:
            weight = self.weight_fp8.to(self.dtype) * self.weight_scale.t().to(self.dtype)
            out = F.linear(rows.to(self.dtype), weight)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def _scaled_mm(self, rows: torch.Tensor) -> torch.Tensor:
        n = rows.shape[0]
        pad = (-n) % 16  # cuBLASLt fp8 wants every GEMM dimension a multiple of 16
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))
        row_scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
        quantised = (rows.float() / row_scale).to(FP8_DTYPE)
        out = torch._scaled_mm(quantised, self.weight_fp8.t(), scale_a=row_scale, scale_b=self.weight_scale, out_dtype=self.dtype)
        return out[:n] if pad else out


class FP8ModulationLinear(ModulationMixin, FP8Linear):
    """An adaLN modulation Linear (`ModulationMixin`: SiLU inside, precomputed rows) with fp8 weights."""


def quantize_fp8(transformer: nn.Module, include_adaln: bool = True) -> int:
    """Replace every Linear inside the DiT's transformer blocks by an `FP8Linear`; returns how many.

    The embedders, `norm_out` and `proj_out` stay in bf16 (tiny, and closest to the output). `include_adaln`
    also quantises the per-block adaLN modulation Linears, a third of the DiT's weights (they keep their SiLU and
    precomputed rows; with `modulation=` tables they run once per image, so fp8 there saves memory, not time).
    """
    count = 0
    for block in transformer.transformer_blocks:
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                if not include_adaln and child_name == "linear" and "norm" in name:
                    continue
                if isinstance(child, ModulationMixin):
                    quantised = FP8ModulationLinear(child)
                    quantised.offset = child.offset
                else:
                    quantised = FP8Linear(child)
                setattr(module, child_name, quantised)
                count += 1
    return count
