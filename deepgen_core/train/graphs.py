"""CUDA graphs over the two heavy regions of a training step (PyTorch's partial-network capture).

A real-size stage-2 step is host-bound: the GPU idles while Python issues ~10k kernels (VLM decoder layers with
their LoRA, DiT blocks, forward and backward). `TrainingGraphs` replays each region's forward and backward as one
CUDA graph through `torch.cuda.make_graphed_callables`, one pair of graphs per input signature:

- the DiT call of the flow-matching loss (uniform batch, no reference latents: the text-to-image micro-batch);
- the encoder's language model + SCB bridge on unpadded prompts (`DeepGenEncoder.encode_embeddings` without mask).

Everything else (tokenisation, embeddings and think tokens, M-RoPE positions, the loss, the optimizer) stays eager,
and any call outside these cases (padded prompts, edits with references, eval mode, gradient checkpointing) runs
the plain forward. The graphs replay the operations of the eager forward and backward, so the loss and the
gradients equal the plain step's within bf16 rounding (on an H100, 0.44 % relative L2 on the DiT gradients against
0.08 % between two plain runs: cuBLAS may pick other kernels on the capture stream); LoRA dropout draws fresh masks
at each replay (CUDA's graph-safe RNG).

Constraints (torch's): CUDA only; bf16 autocast must run with `cache_enabled=False`; the regions' parameters
must keep their `requires_grad` and storage (a checkpoint load into the same tensors is fine; `to()` is not);
each signature's first call captures after 3 warm-up passes (this is also where `torch.compile` compiles), and
its activations stay allocated in the graph's pool; the caller must drop the previous step's loss (its autograd
graph) before a forward that may capture, and keep parameter gradients allocated across gradient accumulation
(zeroed in place): a backward replay hands out static gradient buffers that a `None` .grad would adopt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


class _DiTRegion(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
        return self.transformer(hidden_states, encoder_hidden_states, pooled_projections, timestep).sample


class _EncoderRegion(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs_embeds, position_ids):
        return self.encoder.encode_embeddings(inputs_embeds, None, position_ids)


class _SampleOutput:
    """What `predict_velocity` reads from a DiT call (`.sample`)."""

    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


def _signature(args: tuple[torch.Tensor, ...], device_type: str) -> tuple:
    autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
    return (*((tuple(a.shape), a.dtype, a.device, a.requires_grad) for a in args), autocast)


class TrainingGraphs:
    """Per-signature graphed versions of the DiT call and the encoder core of one `DeepGenTrainModel`.

    Install with `enable_training_graphs(model)`; `model.forward` and `DeepGenEncoder.forward` then route the
    graphable calls here. `captures` counts the signatures captured so far; `capture_seconds` their cost.
    Each region keeps at most `max_shapes` signatures (each holds its activations and a gradient buffer per
    parameter); further shapes run plain, with one warning.
    """

    def __init__(self, transformer: nn.Module, encoder: nn.Module, warmup: int = 3, max_shapes: int = 4, device_type: str = "cuda",
                 graph_fn: Callable = torch.cuda.make_graphed_callables) -> None:
        # device_type / graph_fn: tests route CPU calls through a stand-in for make_graphed_callables.
        self.transformer, self.encoder, self.warmup, self.max_shapes = transformer, encoder, warmup, max_shapes
        self.device_type, self.graph_fn = device_type, graph_fn
        self._graphed: dict[tuple, Callable] = {}
        self._full: set[str] = set()
        self.capture_seconds: dict[str, float] = {}

    @property
    def captures(self) -> int:
        return len(self._graphed)

    def _usable(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> bool:
        return (module.training and torch.is_grad_enabled() and all(a.device.type == self.device_type for a in args)
                and not getattr(module, "gradient_checkpointing", False)
                and not (torch.is_autocast_enabled(self.device_type) and torch.is_autocast_cache_enabled()))

    def _call(self, kind: str, region: Callable[[], nn.Module], args: tuple[torch.Tensor, ...]):
        key = (kind, _signature(args, self.device_type))
        graphed = self._graphed.get(key)
        if graphed is None and sum(k[0] == kind for k in self._graphed) >= self.max_shapes:
            if kind not in self._full:
                self._full.add(kind)
                logger.warning("%s: %d input shapes captured, the most kept; further shapes (here %s) run without CUDA graphs",
                               kind, self.max_shapes, [tuple(a.shape) for a in args])
            return region()(*args)
        if graphed is None:
            start = time.perf_counter()
            module = region()
            sample = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
            graphed = self.graph_fn(module, sample, num_warmup_iters=self.warmup, allow_unused_input=True)
            self._graphed[key] = graphed
            self.capture_seconds[f"{kind} {[tuple(a.shape) for a in args]}"] = seconds = time.perf_counter() - start
            logger.info("captured %s training graphs for %s in %.1f s", kind, [tuple(a.shape) for a in args], seconds)
        return graphed(*args)

    def transformer_call(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, reference_latents=None):
        """Drop-in for `transformer(...)` in the loss: graphed for uniform batches without references."""
        args = (hidden_states, encoder_hidden_states, pooled_projections, timestep)
        if reference_latents is not None or not torch.is_tensor(hidden_states) or not self._usable(self.transformer, args):
            return self.transformer(*args, reference_latents=reference_latents)
        return _SampleOutput(self._call("dit", lambda: _DiTRegion(self.transformer), args))

    def encoder_call(self, inputs_embeds: torch.Tensor, mask: torch.Tensor | None, position_ids: torch.Tensor):
        """Drop-in for `encoder.encode_embeddings`: graphed for unpadded prompts (no mask)."""
        args = (inputs_embeds, position_ids)
        checkpointed = any(getattr(layer, "gradient_checkpointing", False) for layer in self.encoder.vlm.language_model.layers)
        if mask is not None or checkpointed or not self._usable(self.encoder, args):
            return self.encoder.encode_embeddings(inputs_embeds, mask, position_ids)
        return self._call("encoder", lambda: _EncoderRegion(self.encoder), args)


def enable_training_graphs(model: Any, warmup: int = 3, max_shapes: int = 4, **kwargs) -> TrainingGraphs:
    """Route `model`'s (a `DeepGenTrainModel` on CUDA) DiT call and encoder core through CUDA graphs (module
    docstring). Call after the stage is set up (LoRA attached, `requires_grad` set) and any `compile_for_training`;
    `disable_training_graphs` undoes it. `kwargs`: `TrainingGraphs`' test hooks."""
    graphs = TrainingGraphs(model.transformer, model.encoder, warmup, max_shapes, **kwargs)
    model.__dict__["graphs"] = graphs
    model.encoder.__dict__["core_call"] = graphs.encoder_call
    return graphs


def disable_training_graphs(model: Any) -> None:
    """Back to the plain forward; the graphs' memory is freed once nothing references them."""
    model.__dict__.pop("graphs", None)
    model.encoder.__dict__.pop("core_call", None)
