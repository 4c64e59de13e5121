"""Regional `torch.compile` of the DiT and the encoder, and torch's compile cache on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

CompileMode = Literal["regional", "full"]


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
