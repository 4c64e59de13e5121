"""CUDA graphs: replay the DiT forward and the encoder's text model + bridge as captured graphs (exact)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)


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


# Not torch's `make_graphed_callables` (training uses it, `train.graphs`) nor torch.compile's "reduce-overhead" mode:
# the first captures one fixed input signature with autograd, and inference here needs a graph per image size kept
# alive across calls and dropped when weights move (offload, LoRA); the second needs the DiT compiled, and it
# segfaulted the training step on the H100 with torch 2.11 (benchmarks/results/2026-11-23-h100-compile-toggle-fp8/).
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
