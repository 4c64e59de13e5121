"""DEEPGEN_MODEL: the VLM+SCB encoder and the DiT, each owned by its own ComfyUI `ModelPatcher`.

Two patchers let ComfyUI swap them like CLIP and UNet: encoding needs only the encoder, sampling only the DiT.
The modules' linear, conv, norm and embedding layers are re-classed to ComfyUI's `comfy.ops` layers (same
parameters, same maths) so that `--lowvram` / `--novram` can stream the weights that do not fit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..deepgen_core.acceleration import set_block_compile
from ..deepgen_core.errors import DeepGenInputError
from ..deepgen_core.models.transformer import ModulationLinear, ModulationMixin
from ..deepgen_core.pipeline import DeepGenPipeline
from ._comfy import model_management, model_patcher, ops

logger = logging.getLogger(__name__)


class ManagedModule(torch.nn.Module):
    """The module a `ModelPatcher` owns. The patcher writes `model.device`, a read-only property on diffusers and
    transformers models, so it gets this plain container instead; `inner` is the real model."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self._dtype = dtype

    def get_dtype(self) -> torch.dtype:
        return self._dtype


@functools.cache
def _comfy_modulation_linear(linear: type) -> type:
    """The DiT's adaLN Linear (`ModulationLinear`: SiLU inside, precomputed rows) over ComfyUI's Linear."""
    return type("ComfyModulationLinear", (ModulationMixin, linear), {})


def _streamable_classes() -> dict[type, type]:
    layers = ops.disable_weight_init
    return {
        torch.nn.Linear: layers.Linear, torch.nn.Conv2d: layers.Conv2d, torch.nn.LayerNorm: layers.LayerNorm,
        torch.nn.GroupNorm: layers.GroupNorm, torch.nn.Embedding: layers.Embedding,
        ModulationLinear: _comfy_modulation_linear(layers.Linear),
    }


def use_comfy_layers(module: torch.nn.Module) -> int:
    """Re-class plain torch layers to their `comfy.ops.disable_weight_init` twins in place; returns how many.

    The twins subclass the torch layers and compute the same thing until the patcher marks a layer for
    per-call weight casting (partial loading). Only exact classes are swapped, never subclasses; the DiT's adaLN
    Linears (`ModulationLinear`) get a twin of their own that keeps the precomputed-modulation behaviour.
    """
    mapping, count = _streamable_classes(), 0
    for layer in module.modules():
        target = mapping.get(type(layer))
        if target is not None and target is not type(layer):
            layer.__class__ = target
            count += 1
    return count


def _place_remaining_tensors(patcher: Any, device_to: torch.device | None, lowvram_model_memory: float, *args: Any) -> None:
    """`ON_LOAD` callback: after a partial load, the patcher leaves tensors that it cannot stream (think tokens,
    norm weights, position tables, rotary buffers) where they were; move those small leftovers to the compute
    device. `unpatch_model` moves the whole module back on unload, so nothing leaks."""
    model = patcher.model
    if device_to is None or not getattr(model, "model_lowvram", False):
        return
    for layer in model.modules():
        if getattr(layer, "comfy_cast_weights", False):
            continue
        for name, param in list(layer.named_parameters(recurse=False)):
            if param.device != torch.device(device_to):
                param.data = param.data.to(device_to)
        for name, buffer in list(layer.named_buffers(recurse=False)):
            if buffer is not None and buffer.device != torch.device(device_to):
                layer._buffers[name] = buffer.to(device_to)


def make_patcher(module: torch.nn.Module, dtype: torch.dtype, load_device: torch.device, offload_device: torch.device) -> Any:
    use_comfy_layers(module)
    patcher = model_patcher.ModelPatcher(ManagedModule(module, dtype), load_device=load_device, offload_device=offload_device)
    patcher.add_callback(model_patcher.CallbacksMP.ON_LOAD, _place_remaining_tensors)
    return patcher


@dataclass(frozen=True)
class DeepGenModel:
    """What flows through a DEEPGEN_MODEL socket. Treat as immutable: nodes that change settings return a copy
    (patchers and weights shared)."""

    encoder: Any
    transformer: Any
    tokenizer: Any
    scheduler: Any
    name: str
    num_think_tokens: int | None = None  # None: all trained think tokens
    compile: tuple[tuple[str, Any], ...] | None = None  # torch.compile arguments of the DiT blocks (None: eager)
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # the pipeline object, shared by copies

    @property
    def trained_think_tokens(self) -> int:
        return self.encoder.model.inner.config.num_think_tokens

    def with_think_tokens(self, count: int | None) -> DeepGenModel:
        # The setting lives here, not in the patchers: both copies share the patchers, so ComfyUI keeps one
        # loaded model instead of swapping clones of it.
        return replace(self, num_think_tokens=count)

    def with_compile(self, compile_kwargs: dict[str, Any] | None) -> DeepGenModel:
        """A copy whose sampling runs the DiT blocks through `torch.compile(**compile_kwargs)` (None: eager). The
        blocks are shared: each run installs the compiled (or plain) call its model asks for."""
        return replace(self, compile=None if compile_kwargs is None else tuple(sorted(compile_kwargs.items())))

    def pipeline(self, *patchers: Any, memory_required: int = 0) -> DeepGenPipeline:
        """Load `patchers` (ours) together through ComfyUI's memory manager and return a pipeline running on the
        first one's device. The pipeline has no VAE: ComfyUI's VAE nodes encode and decode."""
        model_management.load_models_gpu(list(patchers), memory_required=memory_required)
        pipe = self.cache.get("pipeline")
        if pipe is None:  # kept across runs so that its captured CUDA graphs are reused
            pipe = self.cache["pipeline"] = DeepGenPipeline(self.tokenizer, self.encoder.model.inner, self.transformer.model.inner, None, self.scheduler)
        pipe.execution_device = patchers[0].load_device
        # Partially loaded weights (--lowvram/--novram) are cast per call: nothing a CUDA graph could replay.
        partial = any(p.model.model_lowvram for p in patchers)
        pipe.set_cuda_graphs(False if partial else "auto")
        if self.transformer in patchers:
            if partial and self.compile is not None:
                logger.warning("DeepGen: the DiT is partially loaded (low VRAM); sampling it without torch.compile this time")
            if set_block_compile(self.transformer.model.inner, None if partial or self.compile is None else dict(self.compile)):
                pipe.release_cuda_graphs()  # graphs captured for the other forward
        return pipe


@contextlib.contextmanager
def compile_errors(model: DeepGenModel) -> Iterator[None]:
    """A failed `torch.compile` of a DeepGen Torch Compile copy (its first run compiles) as an actionable error
    instead of dynamo's traceback; the plain model's errors pass through unchanged."""
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as error:
        if model.compile is None:
            raise
        cause = getattr(error, "inner_exception", None) or error  # the backend's own error, when dynamo wrapped one
        summary = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")[:300]
        raise DeepGenInputError(
            f"torch.compile of the DiT failed ({type(cause).__name__}: {summary}). Remove the DeepGen Torch Compile node to sample "
            f"without it; its 'inductor' backend needs a C++ compiler on a CPU and Triton on a GPU ('aot_eager' only checks the graph)."
        ) from error


def activation_estimate(tokens: int, width: int, dtype: torch.dtype) -> int:
    """Rough peak activation bytes for a transformer pass over `tokens` positions of `width` channels (used as
    `memory_required` so that ComfyUI frees room first). The factor 24 covers QKV, attention output, the MLP's
    4x expansion and temporaries."""
    return int(tokens * width * 24 * torch.finfo(dtype).bits // 8)
