"""Inference and training accelerations, one module per lever; `DeepGenPipeline.enable_fast_path` (the mixin in
`fast_path.py`) wires them into the pipeline. What is exact and what is not:

- `graphs`: CUDA graphs (`DiTGraphRunner`) replay the very kernels of an eager forward: bit-identical outputs, no
  host work per step beyond copying the inputs into static buffers. One graph per input shape.
  `EncoderGraphRunner` does the same for the encoder's text model and bridge (captured on a shape's second use).
  Precomputed adaLN modulations (`DeepGenSD3Transformer.modulation`, `fast_path.ModulationSchedule`) are given to
  the graph runner as one more input.
- `compilation`: regional `torch.compile` (inductor, per block) fuses elementwise work (RMS qk-norm, adaLN
  modulation, GELU): equal to the eager path within bf16 rounding. Also the compile cache on disk.
- `qkv`: q/k/v weights concatenated into one GEMM (diffusers' `Attention.fuse_projections`): equal within float
  rounding.
- `gelu`: the MLPs' first GEMM with a GELU epilogue: within bf16 rounding.
- `vision_attention`: the vision tower's windows in one varlen flash-attention call per layer: within bf16 rounding.
- `fp8`: the DiT's block Linear weights (`quantize_fp8`) and the encoder's (`quantize_fp8_encoder`) stored in
  float8 (e4m3, one scale per output channel); fp8 GEMMs on GPUs with fp8 tensor cores only where asked (they pay
  under compile): NOT exact; halves the weight memory.
- `step_cache`: reuses the last DiT velocity while the first block's modulated input barely changes (TeaCache
  style, `enable_fast_path(step_cache=)`): NOT exact; off by default. Imported from its module, not re-exported.

Training (`model.compile` of the train config) reuses `compile_transformer` and `compile_encoder_for_training`.
"""

from .compilation import (
    ENCODER_BLOCKS,
    CompileMode,
    compile_encoder,
    compile_encoder_for_training,
    compile_transformer,
    load_compile_cache,
    save_compile_cache,
    set_block_compile,
)
from .fp8 import FP8_DTYPE, FP8_MAX, FP8Linear, FP8ModulationLinear, quantize_fp8, quantize_fp8_encoder
from .gelu import FusedGELU, set_gelu_fusion
from .graphs import DiTGraphRunner, EncoderGraphRunner, causal_padding_mask, weights_fingerprint
from .qkv import fuse_qkv, fused_qkv_views, reshare_fused_qkv, unfuse_qkv
from .vision_attention import VISION_VARLEN_ATTENTION, set_vision_varlen_attention, vision_varlen_available

__all__ = [
    "ENCODER_BLOCKS", "FP8_DTYPE", "FP8_MAX", "VISION_VARLEN_ATTENTION", "CompileMode", "DiTGraphRunner",
    "EncoderGraphRunner", "FP8Linear", "FP8ModulationLinear", "FusedGELU", "causal_padding_mask", "compile_encoder",
    "compile_encoder_for_training", "compile_transformer", "fuse_qkv", "fused_qkv_views", "load_compile_cache",
    "quantize_fp8", "quantize_fp8_encoder", "reshare_fused_qkv", "save_compile_cache", "set_block_compile", "set_gelu_fusion",
    "set_vision_varlen_attention", "unfuse_qkv", "vision_varlen_available", "weights_fingerprint",
]
