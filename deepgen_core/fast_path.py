"""The pipeline's speed and memory switches: DiT fast path, offload modes and VAE tiling.

`FastPathMixin` is a base of `DeepGenPipeline`. Defaults: CUDA graphs over the DiT forward on CUDA ("auto",
exact), everything else off. The denoising loop stays in Python, so the per-step callback (progress, preview,
cancel) runs after every step whatever is switched on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import nn

from .acceleration import (
    CompileMode,
    DiTGraphRunner,
    EncoderGraphRunner,
    compile_encoder,
    compile_transformer,
    fuse_qkv,
    fused_qkv_views,
    quantize_fp8,
    quantize_fp8_encoder,
    reshare_fused_qkv,
    set_gelu_fusion,
    set_vision_varlen_attention,
)
from .acceleration.step_cache import StepCache, check_step_cache
from .errors import DeepGenInputError
from .latents import vae_scale_factor

logger = logging.getLogger(__name__)

OffloadMode = Literal["none", "model", "sequential"]
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Any, "torch.Tensor | None"], torch.Tensor]
# A modulation table chunk stays below this size (64 MiB: 32 steps of a CFG pair at real size).
MODULATION_CHUNK_BYTES = 64 * 2**20


class ModulationSchedule:
    """The DiT's adaLN modulations (`DeepGenSD3Transformer.modulation`) for every step of one denoising loop.

    They depend only on the timestep and the pooled vector, so they are computed ahead for a chunk of steps at
    a time (one GEMM per norm per chunk instead of one per step: the adaLN weights, a third of the DiT, are read
    once or twice per image instead of once per step; ~0.8 ms of a 12 ms step at 512^2 on an H100).

    Args:
        transformer: the DiT.
        timesteps: (S,) the loop's timesteps.
        pooled: (B, P) the pooled vectors of the DiT batch (CFG rows included).
        max_bytes: largest table chunk (default `MODULATION_CHUNK_BYTES`).
    """

    def __init__(self, transformer: nn.Module, timesteps: torch.Tensor, pooled: torch.Tensor, max_bytes: int | None = None) -> None:
        self.transformer, self.timesteps, self.pooled = transformer, timesteps, pooled
        width = transformer._modulation_columns[-1][1]
        per_step = pooled.shape[0] * width * transformer.dtype.itemsize
        self.chunk = max(1, (max_bytes or MODULATION_CHUNK_BYTES) // per_step)
        self._start: int | None = None
        self._table: torch.Tensor | None = None

    def __getitem__(self, step: int) -> torch.Tensor:
        """(B, W): the rows of step `step`."""
        start = step - step % self.chunk
        if start != self._start:
            self._table = None  # free the previous chunk first
            t = self.timesteps[start : start + self.chunk]
            batch = self.pooled.shape[0]
            table = self.transformer.modulation(t.repeat_interleave(batch), self.pooled.repeat(len(t), 1))
            self._table, self._start = table.view(len(t), batch, -1), start
        return self._table[step - start]


def uses_component(*names: str) -> Callable:
    """Decorate a pipeline step that runs the named components (moved to the GPU for it under offload "model")."""

    def decorate(step: Callable) -> Callable:
        @functools.wraps(step)
        def run(self, *args, **kwargs):
            with self.on_execution_device(*(getattr(self, name) for name in names)):
                return step(self, *args, **kwargs)

        return run

    return decorate


def module_tensors(module: nn.Module, exclude: nn.Module | None = None) -> list[torch.Tensor]:
    """Parameters and buffers of `module`, without those of its submodule `exclude`."""
    skip = {id(t) for t in [*exclude.parameters(), *exclude.buffers()]} if exclude is not None else set()
    return [t for t in [*module.parameters(), *module.buffers()] if id(t) not in skip]


def move_tensors(tensors: list[torch.Tensor], device: torch.device) -> None:
    """Move tensors in place (`.data`), so modules, optimisers and the host copies keep referring to them."""
    for t in tensors:
        t.data = t.data.to(device, non_blocking=True)


def park_on_host(tensors: list[torch.Tensor]) -> None:
    """Move tensors to page-locked CPU memory (reused on later calls): the copies back and forth then run at
    PCIe speed (~20 GB/s) instead of the ~3 GB/s of pageable memory."""
    if not torch.cuda.is_available() or all(t.device.type == "cpu" for t in tensors):
        move_tensors(tensors, torch.device("cpu"))
        return
    for t in tensors:
        host = getattr(t, "_deepgen_host", None)
        if host is None or host.shape != t.shape or host.dtype != t.dtype:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            t._deepgen_host = host
        host.copy_(t.data, non_blocking=True)
        t.data = host
    torch.cuda.synchronize()  # the host copies must be complete before anyone reads them on the CPU


def _blocks_compiled(transformer: nn.Module) -> bool:
    return any(m.__dict__.get("_compiled_call_impl") is not None for m in transformer.modules())


class FastPathMixin:
    """Speed/memory switches shared by every pipeline entry point (see the module docstring)."""

    transformer: nn.Module
    encoder: nn.Module
    vae: nn.Module
    _cuda_graphs: bool | Literal["auto"] = "auto"
    _precompute_modulation: bool = True
    _graph_runner: DiTGraphRunner | None = None
    _encoder_graphs: EncoderGraphRunner | None = None
    _offload: OffloadMode = "none"
    _execution_device: torch.device | None = None
    _step_cache: float = 0.0
    last_step_caches: list[StepCache] = []  # the `StepCache`s of the last denoising loop (skip statistics)

    def enable_fast_path(
        self,
        cuda_graphs: bool | Literal["auto"] = "auto",
        compile: CompileMode | None = None,
        fuse_projections: bool = False,
        fp8: bool = False,
        attention_backend: str | None = None,
        compile_kwargs: dict[str, Any] | None = None,
        compile_encoder_blocks: bool = False,
        precompute_modulation: bool = True,
        fuse_gelu: bool | None = None,
        compile_vae: bool = False,
        vision_varlen: bool | None = None,
        fp8_encoder: bool = False,
        step_cache: float | None = None,
    ) -> None:
        """Choose how the DiT runs at inference. Compile, fusion and fp8 modify the transformer in place.

        Args:
            cuda_graphs: replay the DiT forward as a CUDA graph (one per input shape; the first call of a shape
                pays a warm-up and capture). "auto": on for CUDA inference without sequential offload. Exact.
            compile: "regional" (per transformer block) or "full" `torch.compile`; the first call of a shape
                compiles (cache it with `acceleration.save_compile_cache`). Equal within bf16 rounding.
            fuse_projections: one GEMM for q/k/v per stream. Equal within rounding.
            fp8: float8 weights for the block Linears (and, with `compile`, fp8 GEMMs on sm_89+); not exact,
                halves the DiT's weights.
            fp8_encoder: the same for the VLM's decoder layers and vision blocks (`quantize_fp8_encoder`); not
                exact, halves the encoder's weights. Irreversible, like `fp8`.
            attention_backend: a diffusers attention backend name (`native`, `_native_cudnn`, `_native_flash`,
                `_native_efficient`, `flash` with flash-attn installed); None keeps the current one.
            compile_kwargs: extra `torch.compile` arguments for the DiT.
            compile_encoder_blocks: also compile the VLM/vision/connector blocks (dynamic shapes; once per image
                it saves host time, mostly for edits). Equal within bf16 rounding.
            precompute_modulation: compute the DiT's adaLN modulations of all steps before the loop
                (`ModulationSchedule`; the default). The same maths; equal within the rounding of a larger GEMM.
            fuse_gelu: the MLPs' Linear + GELU as one GEMM with a GELU epilogue on CUDA (`FusedGELU`); None keeps
                the current setting. Equal within bf16 rounding. Set it before or together with `compile`: blocks
                compiled earlier keep the MLP call they were traced with.
            compile_vae: `torch.compile` the VAE decoder, shape-specialised (on an H100: a 512^2 decode 22 -> 8 ms,
                after a ~50 s compile per image size). Equal within bf16 rounding.
            vision_varlen: the vision tower's windowed attention as one varlen flash-attention call per layer on
                CUDA (`set_vision_varlen_attention`) instead of one SDPA call per window; None keeps the current
                setting. Equal within bf16 rounding; edits only.
            step_cache: reuse the last velocity while the first block's modulated input changes by less than this
                accumulated relative L1 amount (`acceleration.step_cache`; 0 = off, the default; None keeps the
                current setting). NOT exact; first and last steps always run.
        """
        if cuda_graphs not in (True, False, "auto"):
            raise DeepGenInputError(f"cuda_graphs must be True, False or 'auto', got {cuda_graphs!r}.")
        if step_cache is not None:
            step_cache = check_step_cache(step_cache)
        if (compile or cuda_graphs is True) and self._offload == "sequential":
            raise DeepGenInputError("compile and CUDA graphs need resident DiT weights; use offload 'model' or 'none' instead of 'sequential'.")
        if fp8 and fuse_projections:
            raise DeepGenInputError("fp8 and fuse_projections cannot be combined; choose one.")
        if fuse_gelu is not None and compile is None and _blocks_compiled(self.transformer):
            raise DeepGenInputError("fuse_gelu must be set before or together with compile: the DiT blocks are already compiled with their current MLP call.")
        if attention_backend is not None:
            self.transformer.set_attention_backend(attention_backend)
        if fuse_projections:
            logger.info("fused q/k/v projections of %d attention modules", fuse_qkv(self.transformer))
        if fuse_gelu is not None:
            logger.info("%s the GELU of %d MLPs", "fused" if fuse_gelu else "unfused", set_gelu_fusion(self.transformer, fuse_gelu))
        if fp8:
            # fp8 GEMMs only under compile: eager, the per-GEMM activation quantisation costs more than they save
            logger.info("stored %d DiT Linear weights in float8", quantize_fp8(self.transformer, fp8_gemm=compile is not None))
        if fp8_encoder:
            logger.info("stored %d encoder Linear weights in float8", quantize_fp8_encoder(self.encoder))
        if compile is not None:
            compile_transformer(self.transformer, compile, **(compile_kwargs or {}))
        if compile_encoder_blocks:
            logger.info("compiled %d encoder blocks", compile_encoder(self.encoder))
        if vision_varlen is not None and set_vision_varlen_attention(self.encoder, vision_varlen) != vision_varlen:
            logger.warning("vision_varlen needs torch.nn.attention.varlen (torch >= 2.9); the vision tower keeps its per-window attention")
        if compile_vae and self.vae is not None:
            self.vae.decoder.compile(dynamic=False)
        self._cuda_graphs = cuda_graphs
        self._precompute_modulation = precompute_modulation
        if step_cache is not None:
            self._step_cache = step_cache
        self._graph_runner = self._encoder_graphs = None

    def modulation_schedule(self, timesteps: torch.Tensor, pooled: torch.Tensor) -> ModulationSchedule | None:
        """The loop's precomputed adaLN modulations, or None (switched off, or under autograd: training and RL
        log-probabilities run the plain forward)."""
        if not self._precompute_modulation or torch.is_grad_enabled() or not hasattr(self.transformer, "modulation"):
            return None
        return ModulationSchedule(self.transformer, timesteps, pooled)

    def set_cuda_graphs(self, cuda_graphs: bool | Literal["auto"]) -> None:
        """Switch CUDA graphs alone; captured graphs are kept when the setting does not change (hosts that call
        this before every run, like the ComfyUI sampler, keep their graphs across runs)."""
        if cuda_graphs != self._cuda_graphs:
            self._cuda_graphs, self._graph_runner, self._encoder_graphs = cuda_graphs, None, None

    def velocity_function(self) -> VelocityFn:
        """The DiT call for one denoising loop: `fn(latents, context, pooled, timestep, reference_latents,
        modulation)` (`modulation`: a `ModulationSchedule` row or None).

        Checked once per loop: a graph runner when CUDA graphs apply, else the plain forward. Graphs captured
        for other weights (moved by offload, a LoRA injected) are dropped and recaptured.
        """
        if not self._graphs_apply() or self._offload == "sequential":
            return self._eager_velocity
        if self._graph_runner is None or self._graph_runner.transformer is not self.transformer:
            self._graph_runner = DiTGraphRunner(self.transformer)
        elif not self._graph_runner.is_valid_for(self.transformer):
            self._graph_runner.reset()
        runner = self._graph_runner

        def run(latents, context, pooled, timestep, reference_latents, modulation=None):
            if runner.supports(latents, reference_latents):
                return runner(latents, context, pooled, timestep, reference_latents, modulation)
            return self._eager_velocity(latents, context, pooled, timestep, reference_latents, modulation)

        return run

    def cached_velocities(self, velocity_fn: VelocityFn, num_steps: int, call_sites: int) -> list[VelocityFn]:
        """One velocity function per DiT call site of one loop: `velocity_fn` itself when step caching is off or
        under autograd (training, RL log-probabilities), else `StepCache`s where every site follows the first
        one's decisions (CFG branches encoded apart are both fresh or both reused at a step)."""
        if self._step_cache <= 0 or torch.is_grad_enabled():
            return [velocity_fn] * call_sites
        leader = StepCache(velocity_fn, self.transformer, num_steps, self._step_cache)
        caches = [leader] + [StepCache(velocity_fn, self.transformer, num_steps, self._step_cache, leader=leader) for _ in range(call_sites - 1)]
        self.last_step_caches = caches
        return caches

    def _graphs_apply(self) -> bool:
        return (self._cuda_graphs is True or (self._cuda_graphs == "auto" and self.device.type == "cuda")) and not torch.is_grad_enabled()

    def encoder_core(self) -> EncoderGraphRunner | None:
        """The encoder's text model + bridge call for `encode_prompt`: a CUDA-graph runner (a shape is captured on its
        second use) when graphs apply and the encoder stays resident (offload "model" moves its weights every call,
        which would invalidate every capture), else None (the plain call)."""
        if not self._graphs_apply() or self._offload != "none" or self.encoder.training:
            return None
        runner = self._encoder_graphs
        if runner is None or not runner.is_valid_for(self.encoder):
            runner = self._encoder_graphs = EncoderGraphRunner(self.encoder)
        return runner

    def _eager_velocity(self, latents, context, pooled, timestep, reference_latents, modulation=None) -> torch.Tensor:
        kwargs = {"modulation": modulation} if modulation is not None else {}
        return self.transformer(latents, context, pooled, timestep, reference_latents=reference_latents, **kwargs).sample

    def release_cuda_graphs(self) -> None:
        """Free the memory held by captured DiT and encoder graphs (they are recaptured on a later call)."""
        self._graph_runner = self._encoder_graphs = None

    # ------------------------------------------------------------------------------------------------ memory

    def set_offload(self, mode: OffloadMode, device: str | torch.device = "cuda") -> None:
        """Where the weights live between uses.

        Args:
            mode: "none": all resident on `device`. "model": every component waits on the CPU and visits
                `device` only while it runs (the VLM during encoding, the DiT while denoising, the VAE), so the
                peak is about the largest component, the VLM; each call moves ~12 GB of weights. "sequential":
                accelerate's `cpu_offload` streams each layer's weights per forward (lowest memory, slowest,
                no CUDA graphs or compile).
            device: the execution device.
        """
        if mode not in ("none", "model", "sequential"):
            raise DeepGenInputError(f"offload must be 'none', 'model' or 'sequential', got {mode!r}.")
        if self._offload == "sequential" and mode != "sequential":
            raise DeepGenInputError("sequential offload cannot be undone on a live pipeline; reload the model.")
        device = torch.device(device)
        self._graph_runner = self._encoder_graphs = None
        self._offload, self._execution_device = mode, device
        if mode == "none":
            for module in (self.encoder, self.transformer, self.vae):
                module.to(device)
            reshare_fused_qkv(self.transformer)
        elif mode == "model":
            for module in (self.encoder, self.transformer, self.vae):
                park_on_host(self._offload_tensors(module, with_vision=True))
            reshare_fused_qkv(self.transformer)
        else:
            from accelerate import cpu_offload

            for module in (self.encoder, self.transformer, self.vae):
                cpu_offload(module, execution_device=device)

    @contextlib.contextmanager
    def on_execution_device(self, *modules: nn.Module) -> Iterator[None]:
        """With offload "model": move `modules` to the execution device for the block, then back to the CPU.

        The encoder's vision tower is left out of `self.encoder` (1.25 GB at real size): text-to-image never
        needs it, and `encode_prompt` moves it on its own, before the text model, for reference images.
        """
        if self._offload != "model":
            yield
            return
        tensors = [t for module in modules for t in self._offload_tensors(module)]
        has_dit = any(module is self.transformer for module in modules)
        move_tensors(tensors, self._execution_device)
        if has_dit:
            reshare_fused_qkv(self.transformer)
        try:
            yield
        finally:
            park_on_host(tensors)
            if has_dit:
                reshare_fused_qkv(self.transformer)
                self._graph_runner = None  # its graphs point at GPU weights that just left; free their pool too

    def _offload_tensors(self, module: nn.Module, with_vision: bool = False) -> list[torch.Tensor]:
        """The tensors that move with `module`: the encoder's vision tower only `with_vision` (it moves on its own
        for reference images); the DiT's fused q/k/v views never (they are re-pointed into the fused weights)."""
        if module is self.encoder and not with_vision:
            return module_tensors(module, exclude=getattr(getattr(module, "vlm", None), "visual", None))
        if module is self.transformer:
            views = fused_qkv_views(module)  # moved with their fused weights, then made views again
            return [t for t in module_tensors(module) if id(t) not in views]
        return module_tensors(module)

    def enable_vae_tiling(self, enabled: bool = True, tile_size: int = 512) -> None:
        """Decode/encode large images in overlapping tiles (diffusers' `enable_tiling`): less memory at 1024^2
        and above; tile seams are blended, so pixels differ slightly from an untiled decode.

        Args:
            tile_size: tile side in pixels (a multiple of the VAE factor). Set explicitly because diffusers takes
                it from the VAE config's `sample_size`, which some SD3 VAE configs leave at a tiny default.
        """
        if not enabled:
            self.vae.disable_tiling()
            return
        factor = vae_scale_factor(self.vae)
        if tile_size <= 0 or tile_size % factor:
            raise DeepGenInputError(f"tile_size must be a positive multiple of {factor}, got {tile_size!r}.")
        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = tile_size
        self.vae.tile_latent_min_size = tile_size // factor
